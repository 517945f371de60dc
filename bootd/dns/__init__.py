"""DNS for the admin network: authoritative for the subnets' domains and reverse
zones, a forwarder for everything else.

codec.py (dnslib's packet layer, pure), zone.py (the names, pure), decide.py
(query -> reply or forward, pure), forward.py (the asyncio upstream client),
server.py (the UDP and TCP transports and the service).
"""
