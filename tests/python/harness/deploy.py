"""The command lines of `deploy/`, as tests run them: the `ExecStart=` of a
systemd unit (`unit_command`) and the image's default command
(`image_command`), with their environment variables filled in the way
systemd and `sh` would and the installed binary's path replaced by the
one under test. The multi-host tests start their nodes and proxy this way,
so the units' command lines are the ones tested."""

import json
import re
import shlex
from pathlib import Path

from .process import shoal_binary

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
INSTALLED = "/usr/local/bin/shoal"


def unit_command(unit, env):
    """The `ExecStart=` of `deploy/<unit>` as argv: `${VAR}` is one word,
    `$VAR` splits on whitespace (systemd's rules); a variable missing from
    `env` fails the test."""
    lines = [line for line in (DEPLOY / unit).read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, f"deploy/{unit} has {len(lines)} ExecStart= lines"
    argv = []
    for word in shlex.split(lines[0][len("ExecStart=") :]):
        whole = re.fullmatch(r"\$\{(\w+)\}", word)
        split = re.fullmatch(r"\$(\w+)", word)
        if whole:
            argv.append(_var(env, whole[1], unit))
        elif split:
            argv.extend(_var(env, split[1], unit).split())
        else:
            assert "$" not in word, f"deploy/{unit}: a variable inside a word: {word!r}"
            argv.append(word)
    return _under_test(argv, unit)


def image_command():
    """The image's default command (`CMD` of `deploy/Containerfile`, a JSON
    array) as argv, the binary's path replaced; run it with the variables
    the image sets (`image_env`) and those a `run -e` would add."""
    lines = [line for line in (DEPLOY / "Containerfile").read_text().splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1, f"deploy/Containerfile has {len(lines)} CMD lines"
    argv = json.loads(lines[0][len("CMD ") :])
    return [a.replace(INSTALLED, str(shoal_binary())) for a in argv]


def image_env():
    """The `ENV` settings of `deploy/Containerfile`."""
    out = {}
    for line in (DEPLOY / "Containerfile").read_text().splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[len("ENV ") :]):
                name, _, value = pair.partition("=")
                out[name] = value
    return out


def _var(env, name, unit):
    assert name in env, f"deploy/{unit} needs ${name}, which the test did not set"
    return env[name]


def _under_test(argv, unit):
    assert argv and argv[0] == INSTALLED, f"deploy/{unit} runs {argv[:1]}, not {INSTALLED}"
    return [str(shoal_binary()), *argv[1:]]
