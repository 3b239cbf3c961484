"""A small message switch for tests: the broker of spec §1.4, to the letter.

Run it as `python -m tests.switch --socket PATH --state DIR`. It is written
from the spec, not from our client, so that the two can disagree and a test
can notice. `broker` holds the queues, `server` speaks HTTP on the socket.
"""
