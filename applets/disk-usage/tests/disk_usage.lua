-- disk-usage: df -P -k -T parsing, the threshold, pseudo file systems, order, and hosts that
-- could not be checked.

local HEADER = "Filesystem     Type     1024-blocks      Used Available Capacity Mounted on\n"

local WEB1 = HEADER .. [[
/dev/sda1      ext4        51343840  45812312   2893768      95% /
devtmpfs       devtmpfs     4014080         0   4014080       0% /dev
tmpfs          tmpfs        4030052   4030052         0     100% /dev/shm
/dev/sda2      ext4       103080888  78452000  19369624      81% /var
/dev/sdb1      xfs        524032000 471628800  52403200      90% /data
]]

local WEB2 = HEADER .. [[
/dev/vda1      ext4        20511312  17614336   1831976      91% /
tmpfs          tmpfs         816448      1208    815240       1% /run
overlay        overlay     20511312  17614336   1831976      91% /var/lib/docker/overlay2/3f1c9e/merged
/dev/vdb1      ext4        10255636   8716412   1000592      90% /mnt/backup disk
]]

local QUIET = HEADER .. [[
/dev/sda1      ext4        51343840   5812312  42893768      12% /
tmpfs          tmpfs        4030052         0   4030052       0% /dev/shm
]]

local function df_everywhere()
	fake("ssh.run", { command = "df -P -k -T" }, { stdout = QUIET })
	fake("ssh.run", { host = "web1" }, { stdout = WEB1 })
	fake("ssh.run", { host = "web2" }, { stdout = WEB2 })
end

test("reports real file systems at or above the threshold, fullest first", function()
	df_everywhere()
	local rows, err = run({ targets = "group:web" })
	assert.eq(err, nil)
	assert.eq(rows, {
		{ host = "web1", mount = "/", fstype = "ext4", used_pct = 95, size_gb = 49.0, avail_gb = 2.8 },
		{ host = "web2", mount = "/", fstype = "ext4", used_pct = 91, size_gb = 19.6, avail_gb = 1.7 },
		-- same percentage: ordered by host name; a mount point with a space is kept whole
		{ host = "web1", mount = "/data", fstype = "xfs", used_pct = 90, size_gb = 499.8, avail_gb = 50.0 },
		{ host = "web2", mount = "/mnt/backup disk", fstype = "ext4", used_pct = 90, size_gb = 9.8, avail_gb = 1.0 },
	})
	-- one df per host, the exact command of the manifest
	assert.called("ssh.run", { host = "web1", command = "df -P -k -T" }, 1)
	assert.called("ssh.run", { host = "web2", command = "df -P -k -T" }, 1)
	assert.eq(#calls(), 2)
end)

test("the threshold is inclusive and defaults to 85", function()
	df_everywhere()
	local rows = run({ targets = "web1", threshold = 90 })
	assert.eq(#rows, 2)
	assert.eq(rows[2].mount, "/data") -- exactly 90%
	rows = run({ targets = "web1", threshold = 96 })
	assert.eq(rows, json.array())
	rows = run({ targets = "web1", threshold = 81 })
	assert.eq(#rows, 3)
	assert.eq(rows[3].mount, "/var")
	rows = run({ targets = "web1" })
	assert.eq(#rows, 2, "81% /var is under the default of 85")
end)

test("tmpfs, devtmpfs and overlay are left out unless include_pseudo", function()
	df_everywhere()
	local rows = run({ targets = "web1,web2", threshold = 0 })
	for _, r in ipairs(rows) do
		assert.falsy(r.fstype == "tmpfs" or r.fstype == "devtmpfs" or r.fstype == "overlay", "pseudo fs " .. r.mount)
	end
	assert.eq(#rows, 5)
	rows = run({ targets = "web1,web2", threshold = 0, include_pseudo = true })
	assert.eq(#rows, 9)
	assert.eq(rows[1], { host = "web1", mount = "/dev/shm", fstype = "tmpfs", used_pct = 100, size_gb = 3.8, avail_gb = 0 })
	rows = run({ targets = "web2", threshold = 91, include_pseudo = true })
	assert.eq(rows[2], {
		host = "web2", mount = "/var/lib/docker/overlay2/3f1c9e/merged", fstype = "overlay",
		used_pct = 91, size_gb = 19.6, avail_gb = 1.7,
	})
end)

test("hosts that could not be checked come last, with why", function()
	df_everywhere()
	fake("ssh.run", { host = "db1" }, { error = "connect to 10.0.2.21:22: Connection refused" })
	fake("ssh.run", { host = "build1" }, { exit_code = 1, stderr = "df: /mnt/nfs: Stale file handle\n" .. "" })
	local rows, err = run({ targets = "*" })
	assert.eq(err, nil)
	assert.eq(#rows, 6)
	assert.eq(rows[5], { host = "build1", mount = "", error = "df: /mnt/nfs: Stale file handle\n" })
	assert.eq(rows[6], { host = "db1", mount = "", error = "connect to 10.0.2.21:22: Connection refused" })
	assert.eq(rows[1].host, "web1")
end)

test("a host that times out is listed, the others still reported", function()
	df_everywhere()
	fake("ssh.run", { host = "web2" }, { error = "timed out after 30s" })
	local rows = run({ targets = "group:web" })
	assert.eq(rows, {
		{ host = "web1", mount = "/", fstype = "ext4", used_pct = 95, size_gb = 49.0, avail_gb = 2.8 },
		{ host = "web1", mount = "/data", fstype = "xfs", used_pct = 90, size_gb = 499.8, avail_gb = 50.0 },
		{ host = "web2", mount = "", error = "timed out after 30s" },
	})
end)

test("empty or odd output gives no rows and no error", function()
	fake("ssh.run", { host = "web1" }, { stdout = "" })
	fake("ssh.run", { host = "web2" }, { stdout = HEADER .. "df: cannot read table of mounted file systems\n" })
	local rows, err = run({ targets = "group:web", threshold = 0 })
	assert.eq(err, nil)
	assert.eq(rows, json.array())
end)

test("a dry run connects nowhere and reports nothing", function()
	df_everywhere()
	local rows, err = run({ targets = "*" }, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(rows, json.array())
	assert.eq(#calls(), 0)
end)

test("params are checked before any host is asked", function()
	df_everywhere()
	local _, err = run({ targets = "group:web", threshold = 101 })
	assert.fails(err, "threshold")
	_, err = run({ threshold = 90 })
	assert.fails(err, "targets")
	_, err = run({ targets = "group:nosuch" })
	assert.fails(err, "matches no host")
	_, err = run({ targets = "group:web", include_pseudo = "yes" })
	assert.fails(err, "include_pseudo")
	assert.eq(#calls(), 0)
end)
