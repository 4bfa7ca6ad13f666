"""The guest's kernel and initramfs, built from Debian packages without root:
`python -m docteur.vm.guestbuild --build-dir build` (see initramfs.py)."""
