"""FakeNOS NOS plugin: huawei_vrp with the real device's prompts and CLI behaviour (see vrp_common.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vrp_common  # noqa: E402

globals().update(vrp_common.build("huawei_vrp"))
