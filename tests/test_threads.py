"""The CPU thread count follows the machine's load (threads.py): measured, not assumed."""

import torch

from charlstm.runtime import threads


class FakeMachine:
    """Step times that depend on the thread count and on whether another process holds a core."""

    def __init__(self):
        self.now = 0.0
        self.busy = False
        self.count = 2

    def clock(self):
        return self.now

    def step(self, governor):
        seconds = {(2, False): 0.02, (1, False): 0.03, (2, True): 0.2, (1, True): 0.035}[self.count, self.busy]
        self.now += seconds
        governor.after_step(seconds)


def test_the_governor_takes_the_faster_count_as_the_load_comes_and_goes(monkeypatch):
    machine = FakeMachine()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: setattr(machine, "count", n))
    governor = threads.ThreadGovernor(clock=machine.clock)
    for _ in range(400):  # quiet: tries 1 thread now and then, keeps 2
        machine.step(governor)
    assert governor.current == 2 and governor.switches == 0
    machine.busy = True  # another process takes a core: 2 threads run ten times slower
    for _ in range(30):
        machine.step(governor)
    assert governor.current == 1 == machine.count and governor.switches == 1
    machine.busy = False
    for _ in range(2000):  # quiet again: a later try of 2 threads wins
        machine.step(governor)
    assert governor.current == 2 == machine.count and governor.switches == 2
    governor.close()
    assert machine.count == 2


def test_a_single_thread_process_is_left_alone(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    governor = threads.ThreadGovernor()
    assert not governor.enabled and threads.candidates(1) == [1] and threads.candidates(8) == [8, 4, 1]
