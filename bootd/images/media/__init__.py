"""Install media import (`bootd images import`): ISO, netboot tarball, tree or URL -> a profile.

- source.py: the media as files (a directory, an ISO read with pycdlib, a tar archive);
- layout.py: which media it is and the plan of what to copy (pure);
- transfer.py: the copy into staging, resumable and checked, renamed into place;
- download.py: http(s) downloads resumed with Range;
- progress.py: a bar on a terminal, plain lines elsewhere;
- service.py: the whole import, ending with <state_dir>/profiles/NAME.toml.
"""
