"""Setup steps of scripts/peers/openstack.sh that talk to the APIs, with Python's standard
library only (no openstackclient/openstacksdk in the venv: it installs faster).

    python3 setup.py identity   service project, service users, catalog, the demo project/user
    python3 setup.py fixtures   public image "tiny" (1 MiB raw), flavors m1.tiny and m1.huge
    python3 setup.py compute    waits until nova-compute is up and its node is in Placement
    python3 setup.py hypervisor waits until the node, once mapped to cell1, is an up hypervisor
    python3 setup.py services   one line per Nova service (for `status`)

Ports from $OPSLET_OS_PORT_BASE (default 25000); the image id goes to $OPSLET_OS_STATE/image-id.
Each step is idempotent (looks things up by name before creating them).
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request

BASE = int(os.environ.get('OPSLET_OS_PORT_BASE', '25000'))
STATE = os.environ.get('OPSLET_OS_STATE', '.')
KEYSTONE = 'http://127.0.0.1:%d/v3' % BASE
PLACEMENT = 'http://127.0.0.1:%d' % (BASE + 1)
NOVA = 'http://127.0.0.1:%d/v2.1' % (BASE + 2)
GLANCE = 'http://127.0.0.1:%d' % (BASE + 3)
NEUTRON = 'http://127.0.0.1:%d' % (BASE + 5)
HOST = os.environ.get('OPSLET_OS_COMPUTE_HOST', 'opslet-compute')
SERVICE_PASSWORD = 'servicepass'

# the whole control plane listens on loopback: never through a proxy
urllib.request.install_opener(urllib.request.build_opener(urllib.request.ProxyHandler({})))


def log(msg):
    sys.stderr.write('[peers/openstack setup] %s\n' % msg)
    sys.stderr.flush()


def call(method, url, body=None, token=None, headers=None, data=None, expect=(200, 201, 202, 204)):
    """One HTTP request; returns (status, response headers, parsed JSON or None)."""
    h = {'Accept': 'application/json'}
    if token:
        h['X-Auth-Token'] = token
    if body is not None:
        data = json.dumps(body).encode()
        h['Content-Type'] = 'application/json'
    h.update(headers or {})
    r = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(r, timeout=60) as resp:
            raw = resp.read()
            status, rh = resp.status, resp.headers
    except urllib.error.HTTPError as e:
        raw, status, rh = e.read(), e.code, e.headers
    if status not in expect:
        raise SystemExit('%s %s -> %d: %s' % (method, url, status, raw[:600].decode('utf-8', 'replace')))
    try:
        return status, rh, json.loads(raw) if raw else None
    except ValueError:
        return status, rh, None


def token(user='admin', password='adminpass', project='admin'):
    body = {'auth': {'identity': {'methods': ['password'], 'password': {'user': {
        'name': user, 'domain': {'id': 'default'}, 'password': password}}},
        'scope': {'project': {'name': project, 'domain': {'id': 'default'}}}}}
    _, h, _ = call('POST', KEYSTONE + '/auth/tokens', body, expect=(201,))
    return h['X-Subject-Token']


def find_or_create(tok, kind, key, query, body):
    """GET /v3/KIND?QUERY; the first match, else POST /v3/KIND {KEY: BODY}."""
    _, _, found = call('GET', '%s/%s?%s' % (KEYSTONE, kind, query), token=tok)
    if found[kind]:
        return found[kind][0]['id']
    _, _, made = call('POST', '%s/%s' % (KEYSTONE, kind), {key: body}, token=tok)
    return made[key]['id']


def identity():
    tok = token()
    role = {n: find_or_create(tok, 'roles', 'role', 'name=' + n, {'name': n})
            for n in ('admin', 'member', 'reader', 'service')}
    service = find_or_create(tok, 'projects', 'project', 'name=service&domain_id=default',
                             {'name': 'service', 'domain_id': 'default', 'description': 'OpenStack services'})
    for name in ('nova', 'placement', 'glance', 'neutron'):
        uid = find_or_create(tok, 'users', 'user', 'name=%s&domain_id=default' % name,
                             {'name': name, 'domain_id': 'default', 'password': SERVICE_PASSWORD})
        for r in ('admin', 'service'):
            call('PUT', '%s/projects/%s/users/%s/roles/%s' % (KEYSTONE, service, uid, role[r]), token=tok)
    for name, typ, url in (('nova', 'compute', NOVA), ('placement', 'placement', PLACEMENT),
                           ('glance', 'image', GLANCE), ('neutron', 'network', NEUTRON)):
        sid = find_or_create(tok, 'services', 'service', 'type=' + typ, {'name': name, 'type': typ, 'enabled': True})
        for iface in ('public', 'internal', 'admin'):
            find_or_create(tok, 'endpoints', 'endpoint', 'service_id=%s&interface=%s' % (sid, iface),
                           {'service_id': sid, 'interface': iface, 'url': url, 'region_id': 'RegionOne'})
    # a non-admin for the tests: role member on a project of its own
    demo = find_or_create(tok, 'projects', 'project', 'name=opslet-demo&domain_id=default',
                          {'name': 'opslet-demo', 'domain_id': 'default', 'description': 'opslet tests (non-admin)'})
    uid = find_or_create(tok, 'users', 'user', 'name=opslet-demo-user&domain_id=default',
                         {'name': 'opslet-demo-user', 'domain_id': 'default', 'password': 'demopass',
                          'default_project_id': demo})
    call('PUT', '%s/projects/%s/users/%s/roles/%s' % (KEYSTONE, demo, uid, role['member']), token=tok)
    token('opslet-demo-user', 'demopass', 'opslet-demo')  # the demo user can log in
    log('identity: service users, catalog (compute, placement, image, network), opslet-demo + opslet-demo-user')


def fixtures():
    tok = token()
    _, _, imgs = call('GET', GLANCE + '/v2/images?name=tiny', token=tok)
    if imgs['images']:
        iid = imgs['images'][0]['id']
    else:
        _, _, img = call('POST', GLANCE + '/v2/images', {
            'name': 'tiny', 'disk_format': 'raw', 'container_format': 'bare', 'visibility': 'public',
            'min_disk': 0, 'min_ram': 0}, token=tok, expect=(201,))
        iid = img['id']
        call('PUT', '%s/v2/images/%s/file' % (GLANCE, iid), token=tok, data=b'\0' * 1048576,
             headers={'Content-Type': 'application/octet-stream'}, expect=(204,))
    for _ in range(120):
        _, _, img = call('GET', '%s/v2/images/%s' % (GLANCE, iid), token=tok)
        if img['status'] == 'active':
            break
        time.sleep(0.5)
    else:
        raise SystemExit('image tiny stays %s' % img['status'])
    with open(os.path.join(STATE, 'image-id'), 'w') as f:
        f.write(iid + '\n')
    # flavor id = name, so "m1.tiny" works both as flavorRef and as a name to look up
    # m1.huge: 32 GiB of RAM, 4 times the fake host's 8 GiB (so "No valid host"), yet within
    # Nova's default quota (50 GiB a project; more is a 403 at the API, before any scheduling)
    for name, ram in (('m1.tiny', 512), ('m1.huge', 32768)):
        st, _, _ = call('GET', '%s/flavors/%s' % (NOVA, name), token=tok, expect=(200, 404))
        if st == 404:
            call('POST', NOVA + '/flavors', {'flavor': {
                'name': name, 'id': name, 'ram': ram, 'vcpus': 1, 'disk': 1}}, token=tok)
    log('fixtures: image tiny %s (active, public), flavors m1.tiny and m1.huge' % iid)


def compute(timeout=240):
    """Until nova-compute is up and its node is a resource provider with inventory (the node
    shows in os-hypervisors only once `nova-manage cell_v2 discover_hosts` has mapped it)."""
    tok, t0, last = token(), time.time(), ''
    while time.time() - t0 < timeout:
        _, _, s = call('GET', NOVA + '/os-services?binary=nova-compute', token=tok)
        up = [x['host'] for x in s['services'] if x['state'] == 'up' and x['status'] == 'enabled']
        last = 'nova-compute services: %s' % [(x['host'], x['state']) for x in s['services']]
        if up:
            _, _, rps = call('GET', PLACEMENT + '/resource_providers', token=tok)
            last += ', resource providers: %s' % [r['name'] for r in rps['resource_providers']]
            for r in rps['resource_providers']:
                _, _, inv = call('GET', '%s/resource_providers/%s/inventories' % (PLACEMENT, r['uuid']), token=tok)
                if 'MEMORY_MB' in inv['inventories']:
                    log('compute: nova-compute on %s up, resource provider %s (%s) with %s' % (
                        up[0], r['name'], r['uuid'],
                        ', '.join('%s=%s' % (k, v['total']) for k, v in sorted(inv['inventories'].items()))))
                    return
        time.sleep(0.5)
    raise SystemExit('compute node not up after %ds (%s)' % (timeout, last))


def hypervisor(timeout=60):
    """Until os-hypervisors shows the (mapped) node enabled and up."""
    tok, t0, last = token(), time.time(), ''
    while time.time() - t0 < timeout:
        _, _, hv = call('GET', NOVA + '/os-hypervisors/detail', token=tok)
        last = [(h['hypervisor_hostname'], h.get('status'), h.get('state')) for h in hv['hypervisors']]
        if [h for h in hv['hypervisors'] if h.get('state') == 'up' and h.get('status') == 'enabled']:
            log('hypervisors: %s' % last)
            return
        time.sleep(0.5)
    raise SystemExit('no hypervisor up after %ds (%s)' % (timeout, last))


def services():
    tok = token()
    _, _, s = call('GET', NOVA + '/os-services', token=tok)
    for x in s['services']:
        print('  %-15s %-15s %s/%s' % (x['binary'], x['host'], x['status'], x['state']))


if __name__ == '__main__':
    steps = {'identity': identity, 'fixtures': fixtures, 'compute': compute, 'hypervisor': hypervisor,
             'services': services}
    if len(sys.argv) != 2 or sys.argv[1] not in steps:
        raise SystemExit('usage: setup.py ' + '|'.join(steps))
    steps[sys.argv[1]]()
