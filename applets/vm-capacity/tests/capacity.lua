-- vm-capacity: hypervisor use and warnings, servers in ERROR with their fault, stuck servers
-- (and ones that are merely busy), and a cloud that refuses a non-admin.

local HV = {
	{ name = "cmp1", state = "up", status = "enabled", vcpus = 32, vcpus_used = 30, memory_mib = 65536, memory_used_mib = 32768, disk_gb = 500, disk_used_gb = 100, running_vms = 12 },
	{ name = "cmp2", state = "up", status = "enabled", vcpus = 32, vcpus_used = 4, memory_mib = 65536, memory_used_mib = 8192, disk_gb = 500, disk_used_gb = 20, running_vms = 2 },
	{ name = "cmp3", state = "down", status = "enabled", vcpus = 32, vcpus_used = 0, memory_mib = 65536, memory_used_mib = 0, disk_gb = 500, disk_used_gb = 0, running_vms = 0 },
}

local function vm(name, state, extra)
	local v = { name = name, id = name .. "-id", state = state, project = "p1", host = "cmp1", vcpus = 1, memory_mib = 512, uuid = name .. "-id" }
	for k, x in pairs(extra or {}) do
		v[k] = x
	end
	return v
end

local SERVERS = {
	vm("web1", "running"),
	vm("broken", "error", { fault = { code = 500, message = "No valid host was found." } }),
	vm("hung", "building", { task = "spawning", updated = "2020-01-01T00:00:00Z" }),
	vm("fresh", "rebooting", { task = "rebooting", updated = "2999-01-01T00:00:00Z" }),
	vm("silent", "error"),
}

test("hypervisor use, the ones to watch, servers in ERROR and stuck ones", function()
	fake("virt.hypervisors", { target = "cloud" }, HV)
	fake("virt.list", { target = "cloud", all_projects = true }, SERVERS)
	local r, err = run({ connection = "cloud" })
	assert.eq(err, nil)
	assert.eq(r.totals.vcpus, 96)
	assert.eq(r.totals.vcpus_used, 34)
	assert.eq(r.totals.running_vms, 14)
	assert.eq(r.hypervisors[1], { name = "cmp1", state = "up", status = "enabled", vcpus = "30/32", memory_mib = "32768/65536", vcpu_percent = 93.8, memory_percent = 50, running_vms = 12, warn = true })
	assert.eq(r.hypervisors[2].warn, nil)
	assert.eq(r.hypervisors[3].warn, true, "a host that is down is flagged")
	assert.eq(r.error, {
		{ name = "broken", id = "broken-id", project = "p1", host = "cmp1", fault = "No valid host was found." },
		{ name = "silent", id = "silent-id", project = "p1", host = "cmp1", fault = "no fault recorded" },
	})
	assert.eq(#r.stuck, 1)
	assert.eq(r.stuck[1].name, "hung")
	assert.eq(r.stuck[1].task, "spawning")
	assert.truthy(r.stuck[1].minutes > 60 * 24 * 365)
	assert.called("virt.list", { all_projects = true }, 1)
end)

test("a quiet cloud logs at info and lists nothing to do", function()
	fake("virt.hypervisors", { HV[2] })
	fake("virt.list", { vm("web1", "running"), vm("web2", "shutoff") })
	local r = run({ connection = "cloud" })
	assert.eq(#r.error, 0)
	assert.eq(#r.stuck, 0)
	assert.eq(r.hypervisors[1].vcpu_percent, 12.5)
end)

test("stuck_minutes decides when a busy server is stuck", function()
	fake("virt.hypervisors", HV)
	fake("virt.list", { vm("hung", "resizing", { task = "resize_migrating", updated = "2020-01-01T00:00:00Z" }) })
	local r = run({ connection = "cloud", stuck_minutes = 10080 })
	assert.eq(#r.stuck, 1, "years old is stuck whatever the threshold")
end)

test("a login without the admin role: the cloud's refusal is the run's error", function()
	fake("virt.hypervisors", { error = "forbidden: Policy doesn't allow os_compute_api:os-hypervisors:list-detail to be performed. (HTTP 403)" })
	local _, err = run({ connection = "cloud" })
	assert.contains(err, "HTTP 403")
	assert.not_called("virt.list")
end)
