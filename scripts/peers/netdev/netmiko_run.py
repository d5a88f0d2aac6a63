"""Reference client for the netdev tests: run commands on a device with netmiko, print JSON.

stdin:  {"device_type": "cisco_ios", "host": "127.0.0.1", "port": 12201, "username": "admin",
         "password": "admin", "secret": "", "commands": ["show version", ...]}
        optional: "timeout" (seconds per command, default 30)
stdout: {"prompt": "sw1#", "outputs": {"show version": "...", ...}}
        on failure: {"error": "ExceptionName: message"} and exit status 1

cisco_* device types call enable() first (fake-switches accepts only an empty enable secret).
Outputs are netmiko's send_command() results: echo and trailing prompt stripped.
"""
import json
import sys

from netmiko import ConnectHandler


def main():
    req = json.load(sys.stdin)
    dt = req["device_type"]
    timeout = float(req.get("timeout", 30))
    try:
        conn = ConnectHandler(
            device_type=dt,
            host=req.get("host", "127.0.0.1"),
            port=int(req.get("port", 22)),
            username=req["username"],
            password=req["password"],
            secret=req.get("secret", ""),
            conn_timeout=timeout,
            auth_timeout=timeout,
            banner_timeout=timeout,
        )
        try:
            if dt.startswith("cisco"):
                conn.enable()
            prompt = conn.find_prompt()
            outputs = {c: conn.send_command(c, read_timeout=timeout) for c in req.get("commands", [])}
        finally:
            # This script never enters config mode; netmiko's cleanup would still probe for it
            # (2 s on Huawei; 10 s on FakeNOS's Junos, whose prompt lacks Junos's trailing space).
            conn.check_config_mode = lambda *a, **k: False
            conn.disconnect()
    except Exception as e:  # noqa: BLE001 - reported to the caller as JSON
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
    print(json.dumps({"prompt": prompt, "outputs": outputs}))


if __name__ == "__main__":
    main()
