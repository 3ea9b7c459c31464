"""Everything that pretends to be a PBX or a phone: for tests, demos, benchmarks.

An AMI server that behaves like Asterisk (`ami_server`), synthetic calls cut
from recorded ones (`templates`, `calls`, `mix`), Asterisk's side of FastAGI
and the hunts it rings (`agi_client`, `hunt`, `routed_calls`), the demo of
`callhub run --demo` (`demo`, `demo_rota`) and `callhub simulate` (`cli`).
`traces/` holds the recorded traces the calls are cut from, with their ground
truth; they are also the repository's sample traces.

The runtime (callhub.daemon and everything below it) never imports this
package; tests/test_architecture.py holds it to that.
"""
