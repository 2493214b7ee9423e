from visionlaunch.launch.cli import main
from visionlaunch.launch.process_end import end_process

end_process(main())
