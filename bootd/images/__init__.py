"""Boot images: the discovery image build (build.py, cpio.py), the VM tests' miniature
installer (testinstaller.py) and the discovery agent (agent.sh, package data)."""
