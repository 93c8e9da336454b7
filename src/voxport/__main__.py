import sys

from voxport.cli import main

sys.exit(main())
