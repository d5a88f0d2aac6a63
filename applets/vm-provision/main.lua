-- vm-provision: create and start one VM; in a dry run, only say what would be created.
return function(params, ctx)
	local spec = { name = params.name, vcpus = params.vcpus, memory = params.memory_mib, network = params.network, disk = params.disk }
	local created = virt.create(params.connection, spec)
	if not created then
		log.info("dry run: nothing created")
		return { planned = true, connection = params.connection, spec = spec }
	end
	local vm = virt.info(params.connection, params.name)
	log.info(string.format("%s is %s with %d vCPU(s) and %d MiB", vm.name, vm.state, vm.vcpus, vm.memory_mib))
	return { name = vm.name, state = vm.state, vcpus = vm.vcpus, memory_mib = vm.memory_mib, uuid = vm.uuid }
end
