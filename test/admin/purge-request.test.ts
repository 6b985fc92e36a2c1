/** The admin purge body: exactly one kind, named problems for everything else. */
import test from 'ava';
import { BadRequest, parsePurgeRequest } from '../../admin/admin-server.js';

test('each purge kind, soft or not', (t) => {
  t.deepEqual(parsePurgeRequest({ url: 'https://a.example/x?q' }), { url: 'https://a.example/x?q' });
  t.deepEqual(parsePurgeRequest({ prefix: 'http://a.example/static/', soft: true }), { prefix: 'http://a.example/static/', soft: true });
  t.deepEqual(parsePurgeRequest({ tags: ['p-1', 'p-2'] }), { tags: ['p-1', 'p-2'] });
  t.deepEqual(parsePurgeRequest({ all: true }), { all: true });
});

test('bad bodies are refused with the problem named', (t) => {
  const refused = (body: unknown, message: RegExp) => t.throws(() => parsePurgeRequest(body), { instanceOf: BadRequest, message });
  refused([], /JSON object/);
  refused({}, /exactly one of url, prefix, tags, all \(got none\)/);
  refused({ url: 'http://a/x', tags: ['t'] }, /got url and tags/);
  refused({ url: 'http://a/x', extra: 1 }, /unknown field "extra"/);
  refused({ tags: [] }, /non-empty list/);
  refused({ url: 'ftp://a/x' }, /http:\/\/ or https:\/\//);
  refused({ url: 'not a url' }, /absolute/);
  refused({ all: 'yes' }, /all must be true/);
  refused({ all: true, soft: 'no' }, /soft must be true or false/);
});
