"""AMI: connection, message parsing, the call correlator, replay and the simulator.

`native` runs first: it decides whether the parser and the correlator are
imported compiled (mypyc) or from their source.
"""

from callhub.ami import native as native
