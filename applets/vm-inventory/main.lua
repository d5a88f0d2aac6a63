-- vm-inventory: one row per VM, running ones first.
return function(params)
	local rows = json.array()
	for _, d in ipairs(virt.list(params.connection, { state = params.state })) do
		table.insert(rows, { name = d.name, state = d.state, vcpus = d.vcpus, memory_mib = d.memory_mib, uuid = d.uuid })
	end
	table.sort(rows, function(a, b)
		if (a.state == "running") ~= (b.state == "running") then
			return a.state == "running"
		end
		return a.name < b.name
	end)
	log.info(string.format("%d VM(s) on %s", #rows, params.connection))
	return rows
end
