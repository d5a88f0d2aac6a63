-- vm-capacity: how full each hypervisor is, and which servers need someone: in ERROR (with the
-- fault Nova recorded) or stuck in a transition for longer than stuck_minutes.
local BUSY = { building = true, rebooting = true, resizing = true, verify_resize = true, unknown = true }

local function percent(used, total)
	if not total or total == 0 then
		return 0
	end
	return math.floor(used * 1000 / total + 0.5) / 10
end

return function(params)
	local conn = params.connection
	local hosts = json.array()
	local total = { vcpus = 0, vcpus_used = 0, memory_mib = 0, memory_used_mib = 0, disk_gb = 0, disk_used_gb = 0, running_vms = 0 }
	for _, h in ipairs(virt.hypervisors(conn)) do
		for k in pairs(total) do
			total[k] += h[k] or 0
		end
		local cpu, mem = percent(h.vcpus_used or 0, h.vcpus), percent(h.memory_used_mib or 0, h.memory_mib)
		table.insert(hosts, {
			name = h.name,
			state = h.state,
			status = h.status,
			vcpus = string.format("%d/%d", h.vcpus_used or 0, h.vcpus or 0),
			memory_mib = string.format("%d/%d", h.memory_used_mib or 0, h.memory_mib or 0),
			vcpu_percent = cpu,
			memory_percent = mem,
			running_vms = h.running_vms,
			warn = cpu > params.warn_percent or mem > params.warn_percent or h.state ~= "up" or nil,
		})
	end
	table.sort(hosts, function(a, b)
		return a.name < b.name
	end)

	local now = time.now()
	local errors, stuck = json.array(), json.array()
	for _, vm in ipairs(virt.list(conn, { all_projects = true })) do
		if vm.state == "error" then
			table.insert(errors, { name = vm.name, id = vm.id, project = vm.project, host = vm.host, fault = vm.fault and vm.fault.message or "no fault recorded" })
		elseif BUSY[vm.state] or vm.task then
			local since = vm.updated and time.parse(vm.updated) or nil
			local minutes = since and math.floor((now - since) / 60) or nil
			if not minutes or minutes >= params.stuck_minutes then
				table.insert(stuck, { name = vm.name, id = vm.id, project = vm.project, host = vm.host, state = vm.state, task = vm.task, minutes = minutes })
			end
		end
	end
	local summary = string.format(
		"%s: %d hypervisor(s), vCPUs %d/%d (%.1f%%), memory %d/%d MiB (%.1f%%), %d server(s) in ERROR, %d stuck",
		conn,
		#hosts,
		total.vcpus_used,
		total.vcpus,
		percent(total.vcpus_used, total.vcpus),
		total.memory_used_mib,
		total.memory_mib,
		percent(total.memory_used_mib, total.memory_mib),
		#errors,
		#stuck
	)
	if #errors > 0 or #stuck > 0 then
		log.warn(summary)
	else
		log.info(summary)
	end
	return { totals = total, hypervisors = hosts, error = errors, stuck = stuck }
end
