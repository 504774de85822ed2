"""What the tests and the benchmarks share: the pieces that start, wait for and stop the
stack's real components.

    ports      free_port()
    waiting    wait_until(), wait_http(): conditions polled against a deadline
    fakegcs    FakeGcs: the fake-gcs-server binary as a process on loopback
    api        launch_api(), stop_api(), running_api(): `python -m model_api` as a process
    compose    Stack: one Compose project with its own name and host ports
    keys       key_pair(), fake_google_credentials(): key material made on the spot
    machine    describe_machine(): the line a benchmark prints about where it ran

pytest fixtures stay in the tests' conftest.py files, as thin wrappers.
"""

from pathlib import Path

# The repository's root: the harness is installed editable from harness/src/ (a
# development dependency only, never in an image).
ROOT = Path(__file__).resolve().parents[3]
