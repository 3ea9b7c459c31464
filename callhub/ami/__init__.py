"""AMI: connection, message parsing, the call correlator, replay and the simulator."""
