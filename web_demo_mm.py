"""Chat with Qwen vision-language models in the browser: `python web_demo_mm.py --help`."""

import sys

from app.main import main

if __name__ == "__main__":
    sys.exit(main())
