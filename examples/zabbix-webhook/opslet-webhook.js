// Zabbix media type "opslet" (type: Webhook). Sends a problem to `opslet serve`'s
// POST /hooks/NAME, signed the way opslet checks deliveries:
//   X-Opslet-Timestamp: <unix seconds>
//   X-Opslet-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
//
// Media type parameters (Administration > Media types > opslet > Parameters):
//   url        https://opslet.example.com/hooks/zabbix-problem
//   secret     the secret `opslet hook add` printed (keep it in a secret macro: {$OPSLET.HOOK.SECRET})
//   event_id   {EVENT.ID}
//   event_value {EVENT.VALUE}          (1 = problem, 0 = recovery)
//   severity   {EVENT.SEVERITY}
//   host       {HOST.HOST}
//   name       {EVENT.NAME}
//   tags       {EVENT.TAGSJSON}
//
// Uses the hmac() JavaScript function of Zabbix's webhook engine (tested with Zabbix 6.0 LTS).
var p = JSON.parse(value);
if (p.event_value !== '1') {
    return 'recovery: nothing to do';
}
var body = JSON.stringify({
    event: { id: p.event_id, severity: p.severity, name: p.name, status: 'PROBLEM', tags: JSON.parse(p.tags || '[]') },
    host: { name: p.host }
});
var ts = Math.floor(Date.now() / 1000).toString();
var req = new HttpRequest();
req.addHeader('Content-Type: application/json');
req.addHeader('X-Opslet-Timestamp: ' + ts);
req.addHeader('X-Opslet-Signature: sha256=' + hmac('sha256', p.secret, ts + '.' + body));
var resp = req.post(p.url, body);
if (req.getStatus() !== 202) {
    throw 'opslet answered ' + req.getStatus() + ': ' + resp;
}
return 'OK ' + resp;
