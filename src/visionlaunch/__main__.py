import sys

from visionlaunch.launch.cli import main

sys.exit(main())
