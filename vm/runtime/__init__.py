"""The microVM at run time: the QEMU command line (qemu.py), the Appliance that drives it
(appliance.py), its run directory (rundir.py) and the child-process rules (process.py)."""
