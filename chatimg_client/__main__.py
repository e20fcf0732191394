"""python -m chatimg_client"""

import sys

from chatimg_client.cli import main

sys.exit(main())
