"""Run FakeNOS from an inventory file in the foreground (the test kills this PID).

    python fakenos_run.py INVENTORY.yaml

Same as `fakenos -i INVENTORY.yaml`, plus:
  * logging at WARNING (FakeNOS's CLI logs INFO/DEBUG per byte);
  * shell hooks: when a NOS plugin's device object has shell_default(shell, line, default) or
    shell_write(shell, value, write) (vrp_common.py), the shell calls them for every command line
    and every output; other platforms (cisco_ios, juniper_junos) behave exactly as in FakeNOS;
  * a replacement of FakeNOS's channel->shell tap that (a) hands a single key press to the
    shell, unechoed, when the shell asks for one (shell.stdin.raw_key = True; used by the
    "---- More ----" pager) and (b) treats CR LF as one line end (FakeNOS turns the LF into a
    second, empty command line, i.e. an extra prompt) and (c) drops FakeNOS's 10 ms sleep after
    every input byte (a 30-character command took 0.3 s to echo). Everything else, including
    the echo of typed-ahead input, is as in FakeNOS 1.2.1.
"""
import io
import logging
import os
import sys
import threading
import time

import paramiko

from fakenos import FakeNOS
from fakenos.plugins import shell as shell_mod
from fakenos.plugins.servers import ssh_server_paramiko as srv
from fakenos.plugins.shell.cmd_shell import CMDShell

log = logging.getLogger("fakenos_run")


class HookShell(CMDShell):
    def default(self, line):
        hook = getattr(self.nos.device, "shell_default", None)
        if hook is None:
            return super().default(line)
        return hook(self, line, super().default)

    def writeline(self, value):
        hook = getattr(self.nos.device, "shell_write", None)
        if hook is None:
            return super().writeline(value)
        return hook(self, value, super().writeline)

    def stop(self):
        self.stopping = True
        super().stop()


def channel_to_shell_tap(channel_stdio, shell_stdin, shell_replied_event, run_srv):
    """FakeNOS 1.2.1's tap with a raw-key mode and CR LF folding (see module docstring)."""
    shell_stdin.raw_key = False
    buffer = io.BytesIO()
    last = b""
    while run_srv.is_set():
        byte = channel_stdio.read(1)
        shell_replied_event.wait(10)
        if not channel_stdio.channel.active:
            break
        try:
            if byte == b"\n" and last == b"\r":
                last = b""
                continue
            last = byte
            if shell_stdin.raw_key and byte:
                shell_stdin.raw_key = False
                shell_stdin.write(byte.decode("utf-8", "replace"))
                shell_replied_event.clear()
            elif byte in (b"\r", b"\n"):
                channel_stdio.write(b"\r\n")
                buffer.write(byte)
                buffer.seek(0)
                line = buffer.read().decode(encoding="utf-8")
                buffer.seek(0)
                buffer.truncate()
                shell_stdin.write(line)
                shell_replied_event.clear()
            else:
                channel_stdio.write(byte)
                if byte not in [b"\x00", b""]:
                    buffer.write(byte)
        except (OSError, EOFError) as e:
            log.debug("channel write error: %s", e)
            break


def quiet_excepthook(args):
    if issubclass(args.exc_type, (paramiko.SSHException, EOFError, OSError)):
        log.info("connection ended: %s: %s", args.exc_type.__name__, args.exc_value)
        return
    sys.__excepthook__(args.exc_type, args.exc_value, args.exc_traceback)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: fakenos_run.py INVENTORY.yaml")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a TCP connect probe (or a client giving up) is not worth a traceback per thread
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    threading.excepthook = quiet_excepthook
    srv.channel_to_shell_tap = channel_to_shell_tap
    shell_mod.shell_plugins["CMDShell"] = HookShell  # FakeNOS copies this dict in its constructor
    net = FakeNOS(inventory=sys.argv[1])
    try:
        net.start()
    except Exception as e:  # e.g. a port in use: the hosts already started would keep us alive
        log.error("start failed: %s", e)
        net.stop()
        os._exit(1)
    print("fakenos: listening on " + ", ".join(f"{h.name}:{h.port}" for h in net.hosts.values()), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        net.stop()


if __name__ == "__main__":
    main()
