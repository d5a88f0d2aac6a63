-- vm-provision: the spec handed to virt.create, the VM read back, the plan of a dry run, the
-- module's refusals (names, ranges, a disk outside every disk_dirs) and libvirt failing.

local function created(name, vcpus, mem, state)
	return {
		name = name, uuid = "3e7a1c52-9b0d-4f8e-a612-5c4d3b2a1f09", id = 14, state = state or "running",
		vcpus = vcpus, memory_mib = mem, max_memory_mib = mem, cpu_time_s = 0.42,
		xml = "<domain type='kvm' id='14'><name>" .. name .. "</name></domain>",
	}
end

test("creates the VM from the params and reports it as libvirt has it", function()
	fake("virt.create", { target = "kvm01" }, true)
	fake("virt.info", { target = "kvm01", name = "api-07" }, created("api-07", 4, 8192))
	local result, err = run({ connection = "kvm01", name = "api-07", vcpus = 4, memory_mib = 8192, network = "prod-br0" })
	assert.eq(err, nil)
	assert.eq(result, { name = "api-07", state = "running", vcpus = 4, memory_mib = 8192, uuid = "3e7a1c52-9b0d-4f8e-a612-5c4d3b2a1f09" })
	local c = calls("virt.create")
	assert.eq(#c, 1)
	assert.eq(c[1].target, "kvm01")
	assert.eq(c[1].args.name, "api-07")
	assert.eq(c[1].args.spec, { name = "api-07", vcpus = 4, memory = 8192, network = "prod-br0" })
	-- the domain XML opslet wrote from the spec
	local xml = c[1].args.xml
	assert.contains(xml, "<name>api-07</name>")
	assert.contains(xml, "prod-br0")
	assert.match(xml, "<vcpu[^>]*>4</vcpu>")
	assert.called("virt.info", { target = "kvm01", name = "api-07" }, 1)
	-- created before it is looked up
	assert.eq(calls()[1].call, "virt.create")
	assert.eq(calls()[2].call, "virt.info")
end)

test("vcpus and memory default to 2 and 2048 MiB; no network, no disk", function()
	fake("virt.create", true)
	fake("virt.info", created("tiny", 2, 2048))
	local result = run({ connection = "kvm01", name = "tiny" })
	assert.eq(result.vcpus, 2)
	assert.eq(calls("virt.create")[1].args.spec, { name = "tiny", vcpus = 2, memory = 2048 })
	assert.falsy(string.find(calls("virt.create")[1].args.xml, "<interface", 1, true), "no network interface")
end)

test("the VM is reported in the state libvirt gives, even when it is not running", function()
	fake("virt.create", true)
	fake("virt.info", created("slow-boot", 2, 2048, "paused"))
	local result = run({ connection = "kvm01", name = "slow-boot" })
	assert.eq(result.state, "paused")
end)

test("a dry run returns the plan and creates nothing", function()
	fake("virt.create", true)
	fake("virt.info", created("api-07", 4, 8192))
	local plan, err = run({ connection = "kvm01", name = "api-07", vcpus = 4, network = "default" }, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(plan, { planned = true, connection = "kvm01", spec = { name = "api-07", vcpus = 4, memory = 2048, network = "default" } })
	assert.eq(#calls(), 0)
end)

test("libvirt refusing the domain fails the run and nothing is looked up", function()
	fake("virt.create", { error = "operation failed: domain 'api-07' already exists with uuid 3e7a1c52-9b0d-4f8e-a612-5c4d3b2a1f09" })
	fake("virt.info", created("api-07", 2, 2048))
	local result, err = run({ connection = "kvm01", name = "api-07" })
	assert.eq(result, nil)
	assert.fails(err, "already exists")
	assert.not_called("virt.info", {})
end)

test("a VM that cannot be read back after it was created fails the run", function()
	fake("virt.create", true)
	fake("virt.info", { error = "Domain not found: no domain with matching name 'api-07'" })
	local _, err = run({ connection = "kvm01", name = "api-07" })
	assert.fails(err, "Domain not found")
	assert.called("virt.create", {}, 1)
end)

test("a disk outside every configured disk_dirs is refused before libvirt is asked", function()
	fake("virt.create", true)
	fake("virt.info", created("api-07", 2, 2048))
	local _, err = run({ connection = "kvm01", name = "api-07", disk = "/var/lib/libvirt/images/api-07.qcow2" })
	assert.fails(err, "virt.create")
	assert.fails(err, "disk")
	_, err = run({ connection = "kvm01", name = "api-07", disk = "/var/lib/libvirt/images/../../../etc/shadow" })
	assert.fails(err, "disk")
	assert.eq(#calls(), 0)
end)

test("a name that is not a VM name is refused by the module", function()
	fake("virt.create", true)
	fake("virt.info", created("x", 2, 2048))
	for _, name in ipairs({ "", "../etc", "web 01", "a/b" }) do
		local _, err = run({ connection = "kvm01", name = name })
		assert.fails(err, "virt.create")
	end
	assert.eq(#calls(), 0)
end)

test("params are checked before libvirt is asked", function()
	fake("virt.create", true)
	fake("virt.info", created("x", 2, 2048))
	local _, err = run({ connection = "kvm01" })
	assert.fails(err, "name")
	_, err = run({ name = "api-07" })
	assert.fails(err, "connection")
	_, err = run({ connection = "kvm01", name = "api-07", vcpus = 0 })
	assert.fails(err, "vcpus")
	_, err = run({ connection = "kvm01", name = "api-07", vcpus = 65 })
	assert.fails(err, "vcpus")
	_, err = run({ connection = "kvm01", name = "api-07", memory_mib = 128 })
	assert.fails(err, "memory_mib")
	assert.eq(#calls(), 0)
end)
