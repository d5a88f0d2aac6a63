-- json: encode/decode round trips, arrays vs objects, null, limits and errors.
return function()
	local s = json.encode({ a = 1, b = { 1, 2, 3 }, c = "x", d = true })
	assert(s == '{"a":1,"b":[1,2,3],"c":"x","d":true}', s)
	local v = json.decode('{"list":[1,2,{"k":null}],"empty":[],"obj":{},"n":1.5}')
	assert(v.list[3].k == json.null, "null decodes to json.null")
	assert(#v.list == 3 and v.n == 1.5)
	assert(json.encode(v.empty) == "[]", "decoded empty arrays stay arrays: " .. json.encode(v.empty))
	assert(json.encode(v.obj) == "{}")
	assert(json.encode(json.array()) == "[]")
	assert(json.encode({}) == "{}")
	assert(json.encode("a\"b") == '"a\\"b"')
	assert(string.find(json.encode({ x = 1 }, { pretty = true }), "\n"), "pretty output has newlines")

	local t = {}
	t.me = t
	local ok, err = pcall(json.encode, t)
	assert(not ok and string.find(err, "cycle"), err)
	ok, err = pcall(json.encode, { f = print })
	assert(not ok and string.find(err, "function as JSON at %$%.f"), err)
	ok, err = pcall(json.encode, 0 / 0)
	assert(not ok and string.find(err, "NaN"), err)
	local deep = {}
	for _ = 1, 200 do
		deep = { deep }
	end
	ok, err = pcall(json.encode, deep)
	assert(not ok and string.find(err, "deeper than 128"), err)
	ok, err = pcall(json.decode, string.rep("[", 500) .. string.rep("]", 500))
	assert(not ok and string.find(err, "json.decode"), err)
	ok, err = pcall(json.decode, "{bad")
	assert(not ok and string.find(err, "json.decode: .*line 1"), err)
	return "ok"
end
