-- vm-provision: create and start one VM; in a dry run, only say what would be created.
return function(params, ctx)
	-- One spec for both backends: libvirt reads vcpus, memory, network and disk; OpenStack
	-- reads image, flavor (or the smallest fitting vcpus and memory) and network.
	local spec = {
		name = params.name,
		vcpus = params.vcpus,
		memory = params.memory_mib,
		network = params.network,
		disk = params.disk,
		image = params.image,
		flavor = params.flavor,
	}
	local created = virt.create(params.connection, spec)
	if not created then
		log.info("dry run: nothing created")
		return { planned = true, connection = params.connection, spec = spec }
	end
	local vm = virt.info(params.connection, params.name)
	log.info(string.format("%s is %s with %d vCPU(s) and %d MiB", vm.name, vm.state, vm.vcpus, vm.memory_mib))
	return { name = vm.name, state = vm.state, vcpus = vm.vcpus, memory_mib = vm.memory_mib, uuid = vm.uuid, flavor = vm.flavor, addresses = vm.addresses }
end
