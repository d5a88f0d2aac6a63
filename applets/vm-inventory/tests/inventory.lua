-- vm-inventory: the rows of virt.list, running VMs first then by name, the state filter, and
-- libvirt failing.

local function vm(name, state, vcpus, mem, id, uuid, cpu)
	return {
		name = name, uuid = uuid, id = id, state = state, vcpus = vcpus,
		memory_mib = mem, max_memory_mib = mem * 2, cpu_time_s = cpu,
	}
end

local KVM01 = {
	vm("web-02", "running", 2, 4096, 7, "6f1d9a02-4c1e-4d55-9a3b-2b7f0c9e1a02", 81234.5),
	vm("build-01", "shutoff", 8, 16384, -1, "0b8e2c11-7a3d-4f0e-8c21-5d9e3f7a0b01", 0),
	vm("db-01", "running", 8, 32768, 3, "a4c3e9d0-1b2f-4e6a-9d7c-8f0e1a2b3c01", 512345.25),
	vm("web-01", "running", 2, 4096, 5, "6f1d9a02-4c1e-4d55-9a3b-2b7f0c9e1a01", 80111),
	vm("win-test", "paused", 4, 8192, 9, "c2d4e6f8-0a1b-4c3d-8e5f-7a9b1c3d5e01", 1500),
	vm("legacy-app", "crashed", 1, 1024, 11, "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a01", 33),
}

test("every VM, running ones first, each group by name", function()
	fake("virt.list", { target = "kvm01" }, KVM01)
	local rows, err = run({ connection = "kvm01" })
	assert.eq(err, nil)
	assert.eq(rows, {
		{ name = "db-01", state = "running", vcpus = 8, memory_mib = 32768, uuid = "a4c3e9d0-1b2f-4e6a-9d7c-8f0e1a2b3c01" },
		{ name = "web-01", state = "running", vcpus = 2, memory_mib = 4096, uuid = "6f1d9a02-4c1e-4d55-9a3b-2b7f0c9e1a01" },
		{ name = "web-02", state = "running", vcpus = 2, memory_mib = 4096, uuid = "6f1d9a02-4c1e-4d55-9a3b-2b7f0c9e1a02" },
		{ name = "build-01", state = "shutoff", vcpus = 8, memory_mib = 16384, uuid = "0b8e2c11-7a3d-4f0e-8c21-5d9e3f7a0b01" },
		{ name = "legacy-app", state = "crashed", vcpus = 1, memory_mib = 1024, uuid = "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a01" },
		{ name = "win-test", state = "paused", vcpus = 4, memory_mib = 8192, uuid = "c2d4e6f8-0a1b-4c3d-8e5f-7a9b1c3d5e01" },
	})
	assert.called("virt.list", { target = "kvm01" }, 1)
	assert.eq(#calls(), 1)
end)

test("the state param keeps only the VMs in that state", function()
	fake("virt.list", { target = "kvm01" }, KVM01)
	local rows = run({ connection = "kvm01", state = "shutoff" })
	assert.eq(#rows, 1)
	assert.eq(rows[1].name, "build-01")
	rows = run({ connection = "kvm01", state = "running" })
	assert.eq(#rows, 3)
	for _, r in ipairs(rows) do
		assert.eq(r.state, "running")
	end
	rows = run({ connection = "kvm01", state = "crashed" })
	assert.eq(rows, { { name = "legacy-app", state = "crashed", vcpus = 1, memory_mib = 1024, uuid = "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a01" } })
end)

test("the connection param picks the hypervisor asked", function()
	fake("virt.list", { target = "kvm01" }, KVM01)
	fake("virt.list", { target = "kvm02" }, { vm("mail-01", "running", 2, 2048, 1, "11111111-2222-4333-8444-555555555555", 10) })
	local rows = run({ connection = "kvm02" })
	assert.eq(#rows, 1)
	assert.eq(rows[1].name, "mail-01")
	assert.not_called("virt.list", { target = "kvm01" })
end)

test("a hypervisor without VMs, or none in the state, gives an empty list", function()
	fake("virt.list", { target = "kvm01" }, json.array())
	local rows, err = run({ connection = "kvm01" })
	assert.eq(err, nil)
	assert.eq(rows, json.array())
	fake("virt.list", { target = "kvm01" }, { KVM01[1] })
	rows = run({ connection = "kvm01", state = "paused" })
	assert.eq(rows, json.array())
end)

test("libvirt failing fails the run with its message", function()
	fake("virt.list", { error = "Cannot recv data: ssh: connect to host kvm01 port 22: Connection refused: Connection reset by peer" })
	local rows, err = run({ connection = "kvm01" })
	assert.eq(rows, nil)
	assert.fails(err, "Connection refused")
end)

test("a dry run lists as a real run does", function()
	fake("virt.list", { target = "kvm01" }, KVM01)
	local rows, err = run({ connection = "kvm01" }, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(#rows, 6)
end)

test("params are checked before libvirt is asked", function()
	fake("virt.list", KVM01)
	local _, err = run({})
	assert.fails(err, "connection")
	_, err = run({ connection = "kvm01", state = "stopped" })
	assert.fails(err, "state")
	_, err = run({ connection = "kvm01", state = "blocked" })
	assert.fails(err, "state")
	assert.eq(#calls(), 0)
end)
