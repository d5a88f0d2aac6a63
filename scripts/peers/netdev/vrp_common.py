"""Huawei VRP / H3C Comware CLI behaviour for FakeNOS (shared by the two *_realprompt.py plugins).

FakeNOS 1.2.1 ships canned `display ...` outputs for huawei_vrp and hp_comware, but with Cisco
prompts (NAME> / NAME#), an `enable` that prints "null", no system-view and "Unknown command" for
anything it does not know. This module reuses those outputs and adds what the real devices do:

  * prompts <NAME> (user view) and [NAME] (system view); `system-view`, `return` (system view
    only), `quit` (system view -> user view; user view -> closes the session);
  * `screen-length 0 temporary`, `screen-length N temporary`, `screen-length disable`;
  * `display current-configuration` and `display version` (Comware's was missing);
  * unambiguous abbreviations ("dis cur", "sys"), like the real CLI;
  * errors as the devices print them, with the caret under the offending word:
        <HUAWEI>display foo                  <H3C>display foo
                        ^                                 ^
        Error: Unrecognized command found at '^' position.     % Unrecognized command found at '^' position.
    (also "Incomplete" and "Ambiguous"); `exit` is not a VRP/Comware command;
  * paging: until screen-length is set to 0/disabled, any output longer than 24 lines stops after
    each 24 lines at "  ---- More ----" and waits for one key, which is not echoed: Enter = one
    more line, q / Ctrl+C = stop, any other key (space) = next page. The More prompt is then
    erased with ESC[nD + spaces + ESC[nD (n = 42 on Huawei, 16 on Comware), as the devices do.

The shell-level parts (errors, abbreviations, paging) need the hooks installed by fakenos_run.py
(HookShell + a raw-key channel tap); plain `fakenos` runs the plugins with prompts/commands only.
"""
import os
import re

import fakenos
import yaml

SCREEN_LENGTH = 24
USER, SYSTEM = "<{base_prompt}>", "[{base_prompt}]"

VRP_CONFIG = """!Software Version V200R019C10SPC500
!Last configuration was updated at 2024-05-14 10:21:33+00:00 by admin
#
sysname {base_prompt}
#
vlan batch 10 20 30 100
#
stp instance 0 root primary
#
dhcp enable
#
aaa
 authentication-scheme default
 authorization-scheme default
 accounting-scheme default
 domain default
 domain default_admin
 local-user admin password irreversible-cipher $1a$O0Zk*W~3l.$0nXq:wz8S#Bp%~Uu4h8G2k!6Zr*3'R}Ffw_Q$
 local-user admin privilege level 15
 local-user admin service-type terminal ssh
#
interface Vlanif1
#
interface Vlanif10
 description mgmt
 ip address 10.0.10.1 255.255.255.0
#
interface Vlanif20
 description users
 ip address 10.0.20.1 255.255.255.0
#
interface MEth0/0/1
 ip address 192.168.1.253 255.255.255.0
#
interface GigabitEthernet0/0/1
 description uplink-core
 port link-type trunk
 port trunk allow-pass vlan 10 20 30 100
#
interface GigabitEthernet0/0/2
 port link-type access
 port default vlan 10
#
interface GigabitEthernet0/0/3
 port link-type access
 port default vlan 20
#
interface GigabitEthernet0/0/4
 port link-type access
 port default vlan 20
#
interface GigabitEthernet0/0/5
 shutdown
#
interface GigabitEthernet0/0/6
 shutdown
#
interface NULL0
#
ip route-static 0.0.0.0 0.0.0.0 10.0.10.254
#
snmp-agent
snmp-agent local-engineid 800007DB03F4A4D6C29E80
snmp-agent sys-info version v3
#
stelnet server enable
ssh user admin
ssh user admin authentication-type password
ssh user admin service-type stelnet
#
user-interface con 0
 authentication-mode password
user-interface vty 0 4
 authentication-mode aaa
 user privilege level 15
 protocol inbound ssh
#
return"""

COMWARE_CONFIG = """#
 version 7.1.070, Release 6616
#
 sysname {base_prompt}
#
 clock timezone UTC add 00:00:00
#
 irf mac-address persistent timer
 irf auto-update enable
 undo irf link-delay
 irf member 1 priority 1
#
 lldp global enable
#
 password-recovery enable
#
vlan 1
#
vlan 10
 name mgmt
#
vlan 20
 name users
#
 stp global enable
#
interface NULL0
#
interface Vlan-interface1
 ip address 192.168.0.233 255.255.255.0
#
interface Vlan-interface10
 ip address 10.0.10.2 255.255.255.0
#
interface GigabitEthernet1/0/1
 port link-mode bridge
 description uplink-core
 port link-type trunk
 port trunk permit vlan 1 10 20
#
interface GigabitEthernet1/0/2
 port link-mode bridge
 port access vlan 10
#
interface GigabitEthernet1/0/3
 port link-mode bridge
 port access vlan 20
#
interface GigabitEthernet1/0/4
 port link-mode bridge
 shutdown
#
 scheduler logfile size 16
#
line class console
 user-role network-admin
#
line vty 0 63
 authentication-mode scheme
 user-role network-operator
#
 ip route-static 0.0.0.0 0 10.0.10.254
#
 ssh server enable
#
domain system
#
local-user admin class manage
 password hash $h$6$Vx1G2m3Fq0r3bJkL$7Y4q0x2cNqzS0Jp8dJ1vX9m5Yt0lKj3n
 service-type ssh terminal
 authorization-attribute user-role network-admin
 authorization-attribute user-role network-operator
#
return"""

COMWARE_VERSION = """H3C Comware Software, Version 7.1.070, Release 6616
Copyright (c) 2004-2021 New H3C Technologies Co., Ltd. All rights reserved.
H3C S6520X-30QC-EI uptime is 0 weeks, 3 days, 2 hours, 11 minutes
Last reboot reason : User reboot

Boot image: flash:/s6520x-cmw710-boot-r6616.bin
Boot image version: 7.1.070, Release 6616
  Compiled Mar 01 2021 11:00:00
System image: flash:/s6520x-cmw710-system-r6616.bin
System image version: 7.1.070, Release 6616
  Compiled Mar 01 2021 11:00:00

Slot 1:
Uptime is 0 weeks,3 days,2 hours,11 minutes
S6520X-30QC-EI with 2 Processors
BOARD TYPE:         S6520X-30QC-EI
DRAM:               2048M bytes
FLASH:              1024M bytes
PCB 1 Version:      VER.B
Bootrom Version:    126
CPLD 1 Version:     002
Release Version:    H3C S6520X-30QC-EI-6616
Patch Version  :    None
Reboot Cause  :     UserReboot
[SubSlot 0] 24SFP Plus+2QSFP Plus"""

VENDORS = {
    "huawei_vrp": {
        "error": "Error: {} command found at '^' position.",
        "erase": "\x1b[42D" + " " * 42 + "\x1b[42D",
        "system_view": "Enter system view, return user view with Ctrl+Z.",
        "screen_length_info": "Info: The configuration takes effect on the current user terminal interface only.",
        "saved": "Now saving the current configuration to the slot 0.\nSave the configuration successfully.",
        "extra": {"display current-configuration": VRP_CONFIG},
    },
    "hp_comware": {
        "error": " % {} command found at '^' position.",
        "erase": "\x1b[16D" + " " * 16 + "\x1b[16D",
        "system_view": "System View: return to User View with Ctrl+Z.",
        "screen_length_info": None,
        "saved": "Validating file. Please wait...\nSaved the current configuration to mainboard device successfully.",
        "extra": {"display current-configuration": COMWARE_CONFIG, "display version": COMWARE_VERSION},
    },
}
MORE = "  ---- More ----"
NOT_COMMANDS = {"enable", "ex", "exit"}  # FakeNOS's Cisco-isms


def _quit(device, base_prompt, current_prompt, command):
    if current_prompt.startswith("["):
        return {"output": None, "new_prompt": USER}
    return True  # quit in user view closes the session


class VrpLikeDeviceBase:
    """Per-host object; FakeNOS hands it to the shell hooks. Per-session state lives on the shell."""

    vendor: dict = {}

    def __init__(self, configuration_file=None):
        self.configuration_file = configuration_file

    # ---- called by fakenos_run.HookShell.default ----
    def shell_default(self, shell, line, default):
        words = [(m.group(), m.start()) for m in re.finditer(r"\S+", line)]
        if not words:
            return False
        if line == "exit" and getattr(shell, "stopping", False):  # HookShell.stop() on a dead session
            return True
        typed = [w for w, _ in words]
        handled = self._save(shell, typed)
        if handled is not None:
            return handled
        handled = self._vlan(shell, typed, words, line)
        if handled is not None:
            return handled
        m = re.fullmatch(r"screen-length (\d+) temporary", " ".join(typed))
        if m:
            shell.screen_length = int(m.group(1))
            info = self.vendor["screen_length_info"]
            if info:
                shell.writeline(info)
            return False
        avail = [
            c for c, d in shell.commands.items()
            if not (c.startswith("_") and c.endswith("_")) and c not in NOT_COMMANDS
            and shell._check_prompt(d.get("prompt"))
        ]
        split = {c: c.split() for c in avail}

        def matches(c, n):  # first n typed words are prefixes of c's words
            cw = split[c]
            return len(cw) >= n and all(cw[i].startswith(typed[i]) for i in range(n))

        exact = " ".join(typed)
        if exact in avail:
            cmd = exact
        else:
            full = [c for c in avail if len(split[c]) == len(typed) and matches(c, len(typed))]
            exact_words = [c for c in full if split[c] == typed]
            if len(full) == 1 or exact_words:
                cmd = exact_words[0] if exact_words else full[0]
            elif full:  # ambiguous: caret under the first word with more than one completion
                i = next(i for i in range(len(typed)) if len({split[c][i] for c in full}) > 1)
                return self._error(shell, "Ambiguous", words[i][1])
            else:
                i = 0
                while i < len(typed) and any(matches(c, i + 1) for c in avail):
                    i += 1
                if i == len(typed):  # every word fits, but the command goes on
                    return self._error(shell, "Incomplete", len(line))
                return self._error(shell, "Unrecognized", words[i][1])
        if cmd in ("screen-length 0 temporary", "screen-length disable"):
            shell.screen_length = 0
        return default(cmd)

    # ---- saving: Huawei asks [Y/N] (answered on the next line), H3C saves with `save force` ----
    def _save(self, shell, typed):
        pending = getattr(shell, "confirm_prompt", None)
        if pending is not None:
            shell.prompt, shell.confirm_prompt = pending, None
            if typed and typed[0].lower() in ("y", "yes"):
                shell.writeline(self.vendor["saved"])
            return False
        user_view = shell.prompt == USER.format(base_prompt=shell.base_prompt)
        if typed == ["save"] and user_view:
            # The question stays on the cursor's line; no prompt until it is answered.
            shell.stdout.write("The current configuration will be written to the device. Are you sure to continue? [Y/N]:")
            shell.confirm_prompt, shell.prompt = shell.prompt, ""
            return False
        if typed == ["save", "force"] and user_view:
            shell.writeline(self.vendor["saved"])
            return False
        return None

    # ---- VLANs: the one piece of configuration these devices keep (per device, in memory) ----
    def _vlan(self, shell, typed, words, line):
        """Handles `vlan N` in system view and the VLAN view; None when `line` is not about VLANs."""
        base = shell.base_prompt
        vlans = self.__dict__.setdefault("vlans", {})
        in_vlan = re.fullmatch(r"\[" + re.escape(base) + r"-vlan(\d+)\]", shell.prompt)
        system = shell.prompt == SYSTEM.format(base_prompt=base)
        if system and typed[0] == "vlan":
            if len(typed) != 2 or not typed[1].isdigit():
                return self._error(shell, "Incomplete" if len(typed) == 1 else "Unrecognized", len(line))
            if not 1 <= int(typed[1]) <= 4094:
                shell.writeline(" " * (len(shell.prompt) + words[1][1]) + "^")
                shell.writeline(self.vendor["error"].format("Wrong parameter").replace("command ", ""))
                return False
            vlans.setdefault(int(typed[1]), None)
            shell.prompt = "[{}-vlan{}]".format(base, typed[1])
            return False
        if system and typed[:2] == ["undo", "vlan"] and len(typed) == 3 and typed[2].isdigit():
            vlans.pop(int(typed[2]), None)
            return False
        if not in_vlan:
            return None
        vid = int(in_vlan.group(1))
        if typed[0] in ("description", "name") and len(typed) >= 2:
            vlans[vid] = line.strip()
            return False
        if typed == ["quit"]:
            shell.prompt = SYSTEM.format(base_prompt=base)
            return False
        if typed == ["return"]:
            shell.prompt = USER.format(base_prompt=base)
            return False
        return self._error(shell, "Unrecognized", words[0][1])

    def vlan_config(self):
        out = []
        for vid, line in sorted(self.__dict__.get("vlans", {}).items()):
            out.append("vlan {}".format(vid))
            if line:
                out.append(" " + line)
            out.append("#")
        return "\n".join(out)

    def _error(self, shell, what, col):
        shell.writeline(" " * (len(shell.prompt) + col) + "^")
        shell.writeline(self.vendor["error"].format(what))
        return False

    # ---- called by fakenos_run.HookShell.writeline ----
    def shell_write(self, shell, value, write):
        n = getattr(shell, "screen_length", SCREEN_LENGTH)
        lines = str(value).splitlines()
        if not n or len(lines) <= n or not hasattr(shell.stdin, "raw_key"):
            return write(value)
        i, step = 0, n
        while i < len(lines):
            chunk = lines[i:i + step]
            write("\n".join(chunk))
            i += len(chunk)
            if i >= len(lines):
                break
            shell.stdin.raw_key = True  # the tap hands over the next key press unechoed
            shell.stdout.write(MORE)
            key = shell.stdin.readline()
            shell.stdout.write(self.vendor["erase"])
            if key is None or key in ("q", "Q", "\x03"):
                break
            step = 1 if key in ("\r", "\n") else n
        return None


def build(platform):
    """Module namespace for a FakeNOS NOS plugin file (NAME, INITIAL_PROMPT, DEVICE_NAME, commands, class)."""
    src = os.path.join(os.path.dirname(fakenos.__file__), "plugins", "nos", "platforms_yaml", platform + ".yaml")
    with open(src, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    vendor = VENDORS[platform]
    commands = {}
    for name, cmd in data["commands"].items():
        if name in NOT_COMMANDS:
            continue
        cmd = dict(cmd)
        cmd["prompt"] = [USER, SYSTEM]
        cmd.pop("new_prompt", None)
        if cmd.get("output") == "null":
            cmd["output"] = None
        commands[name] = cmd
    commands.update({
        "system-view": {"output": vendor["system_view"], "new_prompt": SYSTEM, "prompt": USER},
        "return": {"output": None, "new_prompt": USER, "prompt": SYSTEM},
        "quit": {"output": _quit, "prompt": [USER, SYSTEM]},
        "screen-length 0 temporary": {"output": vendor["screen_length_info"], "prompt": [USER, SYSTEM]},
        "screen-length disable": {"output": None, "prompt": [USER, SYSTEM]},
    })
    def current(device, base_prompt, current_prompt, command, text=vendor["extra"]["display current-configuration"]):
        # The VLANs configured in this session's device go right after `sysname`.
        text = text.replace("{base_prompt}", base_prompt)
        vlans = device.vlan_config()
        if vlans:
            head, sep, tail = text.partition("sysname " + base_prompt + "\n#\n")
            text = head + sep + vlans + "\n" + tail if sep else text + "\n" + vlans
        return {"output": text}

    vendor = dict(vendor, extra=dict(vendor["extra"], **{"display current-configuration": current}))
    for name, out in vendor["extra"].items():
        commands[name] = {"output": out, "prompt": [USER, SYSTEM]}
    device = type("VrpLikeDevice", (VrpLikeDeviceBase,), {"vendor": vendor})
    return {
        "NAME": platform + "_realprompt",
        "INITIAL_PROMPT": USER,
        "DEVICE_NAME": "VrpLikeDevice",
        "VrpLikeDevice": device,
        "commands": commands,
    }
