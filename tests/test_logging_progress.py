"""Progress bars in a terminal (checked through a pseudo-terminal), plain lines in logs."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time

import pytest

from calibrant.progress import Progress

TRAIN = ["fmnist_lt_ce", "train.epochs=2", "model.hidden=[16]", "data.max_per_class=300"]
ETA = re.compile(r"\d+/\d+ \[\d\d:\d\d<\d\d:\d\d")  # tqdm's "n/total [elapsed<remaining"


def _env(data_root):
    return {**os.environ, "CALIBRANT_DATA": str(data_root), "COLUMNS": "120"}


def _in_terminal(args, env, timeout=300.0):
    """Run ``args`` with stdout and stderr on a pseudo-terminal; return (status, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    status = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    return status, b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def terminal_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tty") / "run"
    args = [sys.executable, "-m", "calibrant", "train", *TRAIN, "--out", str(out)]
    return _in_terminal([*args, "--device", "cpu", "--logger", "none"], _env(data_root))


def test_train_draws_bars_with_rate_and_eta_in_a_terminal(terminal_run):
    status, text = terminal_run
    assert status == 0, text[-3000:]
    assert "\r" in text  # redrawn in place
    # a bar for the training steps of each epoch, each validation pass and the test evaluation
    assert re.search(r"epoch 1/2:\s+\d+%", text), text[-3000:]
    assert re.search(r"epoch 2/2:\s+\d+%", text)
    assert re.search(r"validation:\s+\d+%", text)
    assert re.search(r"test:\s+\d+%", text)
    assert ETA.search(text)  # count, elapsed and remaining time
    assert re.search(r"(step/s|s/step)", text)  # the rate
    assert "loss=" in text
    assert re.search(r"test evaluation: \d+ batches in \d+s", text)
    assert "epoch 2/2  loss=" in text  # the per-epoch line stays


def test_train_writes_plain_lines_into_a_log(data_root, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "calibrant", "train", *TRAIN, "--out", str(out)]
    done = subprocess.run(
        [*args, "--device", "cpu", "--logger", "none"],
        env=_env(data_root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "\r" not in log and "\x1b" not in log  # no bars, no terminal codes
    assert not ETA.search(log)
    assert "epoch 1/2  loss=" in log and "epoch 2/2  loss=" in log
    assert re.search(r"test evaluation: \d+ batches in \d+s", log)


def test_bench_bar_shows_runs_done_of_all_and_the_current_run():
    code = (
        "import sys, time\n"
        "from calibrant.progress import Progress\n"
        "p = Progress(None)\n"
        "for i, name in enumerate(['acdc CE seed 1', 'acdc CRaC seed 1', 'acdc CE seed 2'], 1):\n"
        "    p.on_bench_run(i, 3, name)\n"
        "    time.sleep(0.15)\n"
        "p.on_bench_end(3)\n"
        "p.close()\n"
    )
    status, text = _in_terminal([sys.executable, "-c", code], dict(os.environ))
    assert status == 0, text
    assert re.search(r"bench:\s+\d+%.*1/3.*acdc CRaC seed 1", text), text
    assert re.search(r"bench: 100%.* 3/3", text)
    assert ETA.search(text)


def test_quiet_prints_nothing_even_in_a_terminal():
    code = (
        "from calibrant.progress import Progress\n"
        "p = Progress(2, quiet=True)\n"
        "p.on_eval_start('test', 3)\n"
        "for _ in range(3):\n"
        "    p.on_eval_batch('test', None, None)\n"
        "p.on_eval_end('test', {})\n"
        "p.on_epoch_end({'epoch': 1, 'train': {'loss': 1.0}, 'val': {}})\n"
        "p.on_bench_run(1, 2, 'x')\n"
        "p.close()\n"
    )
    status, text = _in_terminal([sys.executable, "-c", code], dict(os.environ))
    assert status == 0 and text == "", text


def test_slow_test_evaluation_prints_throttled_lines_in_a_log():
    import io

    class Clock:
        t = 0.0

        def __call__(self):
            return self.t

    clock, stream = Clock(), io.StringIO()
    p = Progress(1, stream=stream, clock=clock, interval=30.0)
    p.on_eval_start("test", 50)
    for _ in range(50):
        clock.t += 1.0
        p.on_eval_batch("test", None, None)
    p.on_eval_end("test", {})
    lines = stream.getvalue().splitlines()
    assert lines == [
        "  test 30/50  1.00 batch/s  eta 20s",
        "test evaluation: 50 batches in 50s",
    ]
