-- host-facts: facts.sh output parsed into one row per host, and hosts that did not answer.

local APP1 = [[
os=Ubuntu 22.04.4 LTS
kernel=5.15.0-105-generic
arch=x86_64
cpus=8
mem_kb=32858148
uptime_s=1058342.17
load=0.42 0.37 0.31
disk=/ 51343840 45812312 95%
disk=/var 103080888 78452000 81%
disk=/boot 996780 264620 29%
]]

local APP2 = [[
os=Debian GNU/Linux 12 (bookworm)
kernel=6.1.0-18-amd64
arch=x86_64
cpus=4
mem_kb=8131244
uptime_s=7523.40
load=3.10 2.95 2.40
disk=/ 20511312 9614336 51%
disk=/srv 10255636 9716412 99%
]]

-- A minimal container: no getconf, no /proc/meminfo, df unavailable.
local EDGE1 = [[
os=Alpine Linux v3.19
kernel=6.6.14-0-lts
arch=aarch64
cpus=?
mem_kb=
uptime_s=59.80
load=
]]

test("parses facts.sh output into one row per host", function()
	fake("ssh.script", { host = "app1" }, { stdout = APP1 })
	fake("ssh.script", { host = "app2" }, { stdout = APP2 })
	local rows, err = run({ targets = "group:app" })
	assert.eq(err, nil)
	assert.eq(rows, {
		{
			host = "app1", os = "Ubuntu 22.04.4 LTS", kernel = "5.15.0-105-generic", arch = "x86_64",
			cpus = 8, mem_gb = 31.3, uptime = "12d 5h", load1 = 0.42, load5 = 0.37, load15 = 0.31,
			fullest_disk = "/", fullest_pct = 95, disks = 3,
		},
		{
			host = "app2", os = "Debian GNU/Linux 12 (bookworm)", kernel = "6.1.0-18-amd64", arch = "x86_64",
			cpus = 4, mem_gb = 7.8, uptime = "2h 5m", load1 = 3.1, load5 = 2.95, load15 = 2.4,
			fullest_disk = "/srv", fullest_pct = 99, disks = 2,
		},
	})
end)

test("only the packaged facts.sh runs, once per host", function()
	fake("ssh.script", { stdout = APP1 })
	run({ targets = "group:app" })
	assert.called("ssh.script", { host = "app1", command = "script facts.sh" }, 1)
	assert.called("ssh.script", { host = "app2", command = "script facts.sh" }, 1)
	assert.not_called("ssh.run")
	assert.eq(#calls(), 2)
end)

test("missing facts are left out rather than guessed", function()
	fake("ssh.script", { host = "edge1" }, { stdout = EDGE1 })
	local rows = run({ targets = "edge1" })
	assert.eq(rows, {
		{ host = "edge1", os = "Alpine Linux v3.19", kernel = "6.6.14-0-lts", arch = "aarch64", uptime = "0h 0m", disks = 0 },
	})
end)

test("lines that are not KEY=VALUE and malformed disk lines are ignored", function()
	fake("ssh.script", {
		stdout = "/etc/os-release: line 3: syntax error\nos=Rocky Linux 9.3 (Blue Onyx)\ndisk=/data 100 ninety 90%\ndisk=/ 2048 1024 50%\n",
	})
	local rows = run({ targets = "lab1" })
	assert.eq(rows[1].os, "Rocky Linux 9.3 (Blue Onyx)")
	assert.eq(rows[1].disks, 1)
	assert.eq(rows[1].fullest_disk, "/")
	assert.eq(rows[1].fullest_pct, 50)
end)

test("hosts that fail get an error row; the others still report", function()
	fake("ssh.script", { stdout = APP1 })
	fake("ssh.script", { host = "app2" }, { error = "connect to 10.0.4.12:22: No route to host" })
	fake("ssh.script", { host = "edge1" }, { exit_code = 126, stderr = "sh: /tmp/tmp.Xk2: Permission denied" })
	fake("ssh.script", { host = "lab1" }, { error = "timed out after 20s" })
	local rows, err = run({ targets = "*" })
	assert.eq(err, nil)
	assert.eq(#rows, 4)
	assert.eq(rows[1].host, "app1")
	assert.eq(rows[1].fullest_pct, 95)
	assert.eq(rows[2], { host = "app2", error = "connect to 10.0.4.12:22: No route to host" })
	assert.eq(rows[3], { host = "edge1", error = "exit 126: sh: /tmp/tmp.Xk2: Permission denied" })
	assert.eq(rows[4], { host = "lab1", error = "timed out after 20s" })
end)

test("a dry run runs nothing: one empty row per host", function()
	fake("ssh.script", { stdout = APP1 })
	local rows, err = run({ targets = "group:app" }, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(#calls(), 0)
	assert.eq(rows, { { host = "app1", disks = 0 }, { host = "app2", disks = 0 } })
end)

test("params are checked before any host is asked", function()
	fake("ssh.script", { stdout = APP1 })
	local _, err = run({ targets = "group:app", timeout = 0 })
	assert.fails(err, "timeout")
	_, err = run({ targets = "group:app", timeout = 601 })
	assert.fails(err, "timeout")
	_, err = run({})
	assert.fails(err, "targets")
	_, err = run({ targets = "tag:env=staging" })
	assert.fails(err, "matches no host")
	assert.eq(#calls(), 0)
end)
