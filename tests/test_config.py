"""Config parsing: one table of broken files, each naming the key and the problem."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bootd.config import AddressRange, check_host, load_config, parse_config
from bootd.errors import ConfigError

GOOD = """\
[server]
admin_address = "198.18.0.1"
interfaces = ["eth1"]
state_dir = "/srv/bootd"

[http]
listen = "198.18.0.1:8081"

[[subnets]]
cidr = "198.18.0.0/24"
router = "198.18.0.254"
dns_servers = ["198.18.0.1"]
domain = "Rack1.Example."
lease_time = 600
static_range = "198.18.0.10-198.18.0.99"
dynamic_pool = "198.18.0.100-198.18.0.199"
bmc_range = "198.18.0.200-198.18.0.250"

[[subnets]]
cidr = "198.19.1.0/24"
dynamic_pool = "198.19.1.10-198.19.1.20"
"""


def test_good_config_parses_to_typed_values() -> None:
    c = parse_config(GOOD, "good.toml")
    assert c.admin_address == IPv4Address("198.18.0.1")
    assert c.interfaces == ("eth1",)
    assert c.state_dir == Path("/srv/bootd")
    assert c.database_url == "sqlite+aiosqlite:////srv/bootd/bootd.db"
    assert (c.http.host, c.http.port) == ("198.18.0.1", 8081)
    assert c.http.api_token_file == Path("/srv/bootd/api-token")
    assert c.services.dhcp and c.services.tftp and c.services.http and c.services.dns
    s0, s1 = c.subnets
    assert s0.cidr == IPv4Network("198.18.0.0/24")
    assert s0.domain == "rack1.example"
    assert s0.lease_time == 600
    assert s0.dynamic_pool == AddressRange(IPv4Address("198.18.0.100"), IPv4Address("198.18.0.199"))
    assert len(s0.static_range or ()) == 90
    assert s1.router is None and s1.lease_time == 3600 and s1.static_range is None
    assert c.subnet_for(IPv4Address("198.19.1.7")) is s1
    assert c.subnet_for(IPv4Address("10.0.0.1")) is None


def test_defaults_for_a_minimal_file() -> None:
    c = parse_config('[server]\nadmin_address = "10.1.2.3"\ninterfaces = ["eth0"]\n')
    assert c.state_dir == Path("/var/lib/bootd")
    assert (c.http.host, c.http.port) == ("10.1.2.3", 8080)
    assert c.log_level == "info"
    assert c.subnets == ()


def test_postgres_url_is_accepted() -> None:
    c = parse_config(GOOD.replace('state_dir = "/srv/bootd"', 'state_dir = "/srv/bootd"\n'
                                  'database_url = "postgresql+asyncpg://bootd:pw@db/bootd"'))
    assert c.database_url == "postgresql+asyncpg://bootd:pw@db/bootd"


def _edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


BAD = [
    # (config text, key named, words in the message)
    ("[server\n", "", "not valid TOML"),
    (_edit('admin_address = "198.18.0.1"\n', ""), "server.admin_address", "is required"),
    (_edit('"198.18.0.1"\ninterfaces', '"198.18.0.300"\ninterfaces'), "server.admin_address",
     "not an IPv4 address"),
    (_edit('state_dir = "/srv/bootd"', 'state_dir = "srv"'), "server.state_dir", "absolute path"),
    (_edit('state_dir = "/srv/bootd"', 'state_dri = "/srv"'), "server.state_dri", "unknown key"),
    (_edit('interfaces = ["eth1"]', 'interfaces = "eth1"'), "server.interfaces",
     "must be an array, not a string"),
    (_edit('interfaces = ["eth1"]', 'interfaces = ["eth1", "eth1"]'), "server.interfaces[1]",
     "listed twice"),
    (_edit('interfaces = ["eth1"]', 'interfaces = []'), "server.interfaces",
     "required when dhcp, tftp or dns"),
    (_edit('state_dir = "/srv/bootd"', 'state_dir = "/srv"\ndatabase_url = "mysql://x"'),
     "server.database_url", "must start with"),
    (_edit('state_dir = "/srv/bootd"', 'state_dir = "/srv"\nlog_level = "loud"'),
     "server.log_level", "not one of"),
    (_edit('listen = "198.18.0.1:8081"', 'listen = "198.18.0.1:99999"'), "http.listen",
     "not a TCP port"),
    (_edit('listen = "198.18.0.1:8081"', 'listen = "web:80"'), "http.listen", "not an IP address"),
    (GOOD + "\n[services]\ndhcp = 1\n", "services.dhcp", "must be a boolean"),
    (GOOD + "\n[services]\nftp = true\n", "services.ftp", "unknown key"),
    (GOOD + "\n[extra]\n", "extra", "unknown key"),
    (_edit('cidr = "198.18.0.0/24"', 'cidr = "198.18.0.1/24"'), "subnets[0].cidr",
     "not an IPv4 network"),
    (_edit('cidr = "198.18.0.0/24"', 'cidr = "198.18.0.0/30"'), "subnets[0].cidr", "too small"),
    (_edit('router = "198.18.0.254"', 'router = "198.19.0.254"'), "subnets[0].router",
     "outside subnet"),
    (_edit('dns_servers = ["198.18.0.1"]', 'dns_servers = ["ns1"]'), "subnets[0].dns_servers[0]",
     "not an IPv4 address"),
    (_edit('domain = "Rack1.Example."', 'domain = "bad_domain"'), "subnets[0].domain",
     "invalid DNS domain"),
    (_edit("lease_time = 600", "lease_time = 5"), "subnets[0].lease_time", "between 60"),
    (_edit("lease_time = 600", 'lease_time = 600\nrack = "r1\\nr2"'), "subnets[0].rack",
     "1-64 printable characters"),
    (_edit("lease_time = 600", "lease_time = true"), "subnets[0].lease_time", "must be an integer"),
    (_edit('dynamic_pool = "198.18.0.100-198.18.0.199"', 'dynamic_pool = "198.18.0.100"'),
     "subnets[0].dynamic_pool", "not a range"),
    (_edit('dynamic_pool = "198.18.0.100-198.18.0.199"', 'dynamic_pool = "198.18.0.199-198.18.0.100"'),
     "subnets[0].dynamic_pool", "ends before it starts"),
    # A pool outside its subnet.
    (_edit('dynamic_pool = "198.18.0.100-198.18.0.199"', 'dynamic_pool = "198.18.0.100-198.18.1.5"'),
     "subnets[0].dynamic_pool", "outside subnet 198.18.0.0/24"),
    (_edit('dynamic_pool = "198.18.0.100-198.18.0.199"', 'dynamic_pool = "198.18.0.100-198.18.0.255"'),
     "subnets[0].dynamic_pool", "network or broadcast"),
    (_edit('static_range = "198.18.0.10-198.18.0.99"', 'static_range = "198.18.0.1-198.18.0.99"'),
     "subnets[0].static_range", "contains the admin address 198.18.0.1"),
    (_edit('bmc_range = "198.18.0.200-198.18.0.250"', 'bmc_range = "198.18.0.200-198.18.0.254"'),
     "subnets[0].bmc_range", "contains the router"),
    # Overlapping pools.
    (_edit('static_range = "198.18.0.10-198.18.0.99"', 'static_range = "198.18.0.10-198.18.0.100"'),
     "subnets[0].static_range", "overlaps dynamic_pool 198.18.0.100-198.18.0.199"),
    (_edit('cidr = "198.19.1.0/24"\ndynamic_pool = "198.19.1.10-198.19.1.20"',
           'cidr = "198.18.0.128/25"'), "subnets[1].cidr",
     "overlaps subnets[0]"),
    (_edit('dynamic_pool = "198.19.1.10-198.19.1.20"', 'dynamic_pool = "198.19.1.10-198.19.1.20"\n'
           'pool = "x"'), "subnets[1].pool", "unknown key"),
    (GOOD.replace("[[subnets]]", "[subnets]", 1).replace("[[subnets]]", "[x]"), "subnets",
     "must be an array, not a table"),
    ('subnets = ["198.18.0.0/24"]\n[server]\nadmin_address = "1.2.3.4"\ninterfaces = ["e"]\n',
     "subnets[0]", "must be a table, not a string"),
    # [tftp], [install], [lifecycle], [profiles.*]
    (GOOD + "[tftp]\nmax_blksize = 100\n", "tftp.max_blksize", "between 512 and 65464"),
    (GOOD + "[tftp]\ntimeout = \"1\"\n", "tftp.timeout", "number of seconds"),
    (GOOD + '[install]\nroot_password_hash = "hunter2"\n', "install.root_password_hash", "crypt(3)"),
    (GOOD + '[install]\nssh_keys = ["not a key"]\n', "install.ssh_keys[0]", "OpenSSH public key"),
    (GOOD + '[install]\ndisk = "sda; rm -rf /"\n', "install.disk", "not a disk name"),
    (GOOD + "[lifecycle.timeouts]\nflying = 3\n", "lifecycle.timeouts.flying", "not a node state"),
    (GOOD + "[lifecycle.timeouts]\nready = 3\n", "lifecycle.timeouts.ready", "has no timeout"),
    (GOOD + '[profiles.my-os]\nfamily = "kickstart"\n', "profiles.my-os.template", "is required"),
    (GOOD + '[profiles.my-os]\nfamily = "windows"\ntemplate = "x"\n', "profiles.my-os.family",
     "not one of"),
    (GOOD + '[profiles.my-os]\nfamily = "kickstart"\ntemplate = "kickstart/nope.j2"\n',
     "profiles.my-os.template", "not found"),
    (GOOD + '[profiles.rocky-9]\ntree = "file:///etc"\n', "profiles.rocky-9.tree", "not an http"),
]


@pytest.mark.parametrize(("text", "key", "words"), BAD, ids=[f"{b[1] or 'toml'}:{b[2]}" for b in BAD])
def test_bad_config_names_file_key_and_problem(text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "/etc/bootd/bootd.toml")
    assert err.value.key == key
    assert words in err.value.problem
    assert str(err.value).startswith(f"/etc/bootd/bootd.toml: {key}: " if key else "/etc/bootd/")


def test_missing_interface_is_named(tmp_path: Path) -> None:
    config = parse_config(GOOD, "x.toml")
    check_host(config, ["lo", "eth1"])
    with pytest.raises(ConfigError, match=r"x.toml: server.interfaces\[0\]: no interface named 'eth1'"):
        check_host(config, ["lo", "eth0"])


def test_load_config_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(binary)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_restart_needed_for_lists_socket_and_database_keys() -> None:
    a = parse_config(GOOD)
    b = parse_config(_edit("lease_time = 600", "lease_time = 900"))
    assert a.restart_needed_for(b) == []
    c = parse_config(_edit('listen = "198.18.0.1:8081"', 'listen = "198.18.0.1:8082"'))
    assert a.restart_needed_for(c) == ["http.listen"]


def test_profiles_builtin_and_operator_added() -> None:
    config = parse_config(GOOD + '[profiles.alma-9]\nfamily = "kickstart"\n'
                          'template = "kickstart/rocky-9.ks.j2"\n'
                          'tree = "http://mirror.example/alma/9/BaseOS/x86_64/os"\n')
    assert {"ubuntu-20.04", "ubuntu-24.04", "rhel-5.6", "rocky-9", "alma-9"} <= set(config.profiles)
    alma = config.profiles["alma-9"]
    assert (alma.kernel, alma.tree_url("http://x")) == ("images/alma-9/vmlinuz",
                                                          "http://mirror.example/alma/9/BaseOS/x86_64/os")
    assert config.profiles["rocky-9"].tree_url("http://h:8080") == "http://h:8080/images/rocky-9/tree"


# -- issue 14/15: waves, rogue DHCP, router advertisements, daemon id -----------------

def test_waves_rogue_ra_and_daemon_id_parse() -> None:
    from bootd.model.states import NodeState
    c = parse_config(GOOD + '\n[waves]\nstates = ["installing"]\nmax_global = 20\nmax_per_rack = 0\n'
                     'wait = 5\nforget_after = 60\n'
                     '[rogue]\nprobe_interval = 0\nallowed = ["198.18.0.254"]\n'
                     '[ra]\nenabled = false\ninterval = 10\n'
                     '[dhcp]\nregister_rate = 500.0\nregister_burst = 5000\n'.replace(
                         "[server]\n", "[server]\n"), "w.toml")
    assert c.waves.states == frozenset({NodeState.INSTALLING})
    assert (c.waves.max_global, c.waves.max_per_rack, c.waves.wait, c.waves.forget_after) == (20, 0, 5, 60)
    assert c.rogue.probe_interval == 0 and c.rogue.allowed == (IPv4Address("198.18.0.254"),)
    assert not c.ra.enabled and c.ra.interval == 10
    assert (c.dhcp.register_rate, c.dhcp.register_burst) == (500.0, 5000)
    d = parse_config(GOOD.replace('state_dir', 'daemon_id = "admin-2"\nstate_dir'))
    assert d.daemon_id == "admin-2"
    assert d.waves.max_global == 8 and d.ra.enabled and d.rogue.watch


@pytest.mark.parametrize(("extra", "key"), [
    ('[waves]\nstates = ["ready"]\n', "waves.states[0]"),
    ('[waves]\nwait = 30\nforget_after = 40\n', "waves.forget_after"),
    ('[waves]\nmax_global = -1\n', "waves.max_global"),
    ('[rogue]\nprobe_interval = 3\n', "rogue.probe_interval"),
    ('[rogue]\nallowed = ["x"]\n', "rogue.allowed[0]"),
    ('[ra]\ninterval = 2\n', "ra.interval"),
    ('[dhcp]\nregister_burst = 0\n', "dhcp.register_burst"),
])
def test_wave_rogue_ra_errors_name_the_key(extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD + "\n" + extra, "w.toml")
    assert key in str(err.value)


def test_daemon_id_must_be_a_name() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD.replace('state_dir', 'daemon_id = "a b"\nstate_dir'))
    assert "server.daemon_id" in str(err.value)
