"""Boot images: the discovery image build (build.py, cpio.py), the VM tests' miniature
installer (testinstaller.py), the discovery agent (agent.sh, package data) and the
first-stage loaders from Debian packages (bootloaders.py, packages.py)."""
