"""bootd: a network-boot appliance daemon (DHCP, TFTP, HTTP boot, DNS, node state machine)."""

__version__ = "0.1.0"
