import os
import sys

from .cli import main

code = main()
# Everything a command writes is flushed and renamed into place before main() returns; with torch loaded, the
# interpreter's own teardown (module finalisers, freeing every cached object) then costs ~0.5 s for nothing.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
