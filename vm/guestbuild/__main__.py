import sys

from docteur.vm.guestbuild.initramfs import main

sys.exit(main())
