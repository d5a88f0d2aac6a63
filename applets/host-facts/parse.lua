-- Turns facts.sh output into one flat row.
local M = {}

local function human_duration(seconds: number): string
	local d = math.floor(seconds / 86400)
	local h = math.floor((seconds % 86400) / 3600)
	local m = math.floor((seconds % 3600) / 60)
	if d > 0 then
		return string.format("%dd %dh", d, h)
	end
	return string.format("%dh %dm", h, m)
end

function M.row(host: string, text: string)
	local kv = {}
	local disks = {}
	for line in string.gmatch(text, "[^\n]+") do
		local k, v = string.match(line, "^([%w_]+)=(.*)$")
		if k == "disk" then
			local mount, size, used, pct = string.match(v, "^(%S+) (%d+) (%d+) (%d+)%%$")
			if mount then
				table.insert(disks, { mount = mount, size_kb = tonumber(size), used_kb = tonumber(used), pct = tonumber(pct) })
			end
		elseif k then
			kv[k] = v
		end
	end
	table.sort(disks, function(a, b)
		return a.pct > b.pct
	end)
	local load1, load5, load15 = string.match(kv.load or "", "^(%S+) (%S+) (%S+)$")
	local uptime = tonumber(kv.uptime_s or "")
	local fullest = disks[1]
	return {
		host = host,
		os = kv.os,
		kernel = kv.kernel,
		arch = kv.arch,
		cpus = tonumber(kv.cpus or ""),
		mem_gb = kv.mem_kb and tonumber(kv.mem_kb) and math.floor(tonumber(kv.mem_kb) / 1048576 * 10 + 0.5) / 10 or nil,
		uptime = uptime and human_duration(uptime) or nil,
		load1 = tonumber(load1 or ""),
		load5 = tonumber(load5 or ""),
		load15 = tonumber(load15 or ""),
		fullest_disk = fullest and fullest.mount or nil,
		fullest_pct = fullest and fullest.pct or nil,
		disks = #disks,
	}
end

return M
