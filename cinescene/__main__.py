import sys

from cinescene.launch.cli import main

sys.exit(main())
