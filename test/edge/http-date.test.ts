/** RFC 9110 §5.6.7 HTTP-date: the three formats recipients accept, and what is not a date. */
import test from 'ava';
import { parseHttpDate } from '../../pipeline/http-date.js';

const NOV_6_1994 = Date.UTC(1994, 10, 6, 8, 49, 37);

test('§5.6.7 IMF-fixdate, rfc850-date and asctime-date all parse to the same instant', (t) => {
  t.is(parseHttpDate('Sun, 06 Nov 1994 08:49:37 GMT'), NOV_6_1994);
  t.is(parseHttpDate('Sunday, 06-Nov-94 08:49:37 GMT', Date.UTC(2026, 0, 1)), NOV_6_1994);
  t.is(parseHttpDate('Sun Nov  6 08:49:37 1994'), NOV_6_1994);
  t.is(parseHttpDate('Sun Nov 16 08:49:37 1994'), Date.UTC(1994, 10, 16, 8, 49, 37));
});

test('§5.6.7 a two-digit year more than 50 years ahead is the most recent past year with those digits', (t) => {
  const now = Date.UTC(2026, 11, 6);
  t.is(new Date(parseHttpDate('Thursday, 01-Jan-70 00:00:00 GMT', now)!).getUTCFullYear(), 2070);
  t.is(new Date(parseHttpDate('Friday, 01-Jan-77 00:00:00 GMT', now)!).getUTCFullYear(), 2077 - 100);
  t.is(new Date(parseHttpDate('Wednesday, 01-Jan-26 00:00:00 GMT', now)!).getUTCFullYear(), 2026);
});

test('§5.6.7 day and month names and GMT are read whatever their case', (t) => {
  t.is(parseHttpDate('SUN, 06 NOV 1994 08:49:37 gMT'), NOV_6_1994);
  t.is(parseHttpDate('sunday, 06-nov-94 08:49:37 GMT', Date.UTC(2026, 0, 1)), NOV_6_1994);
});

const INVALID = [
  'Thu, 18 Aug 2050 02:01:18 AEST',
  'Thu 18 Aug 2050 02:01:18 GMT',
  'Thu, 18 Aug 50 02:01:18 GMT',
  'Thu, 18 Aug 2050 02.01.18 GMT',
  '0',
  '-1',
  '',
  '2026-12-06T00:00:00Z',
  'Sun, 06 Nov 1994 08:49:37 UTC',
  'Sun, 06 Nov 1994 08:49:37 +0000',
  'Sun, 6 Nov 1994 08:49:37 GMT',
  'Sun,  06 Nov 1994 08:49:37 GMT',
  'Sun, 06 Nov 94 08:49:37 GMT',
  'Sun, 06 Nov 1994 8:49:37 GMT',
  'Sun, 06 Nov 1994 24:00:00 GMT',
  'Sun, 31 Feb 1994 08:49:37 GMT',
  'Sun, 06-Nov-1994 08:49:37 GMT',
  'Sunday, 06 Nov 1994 08:49:37 GMT',
  'Sun Nov 06 08:49:37 1994 GMT',
  'Sun, 06 Nov 1994 08:49:37 GMT extra',
];

for (const text of INVALID) {
  test(`§5.6.7 ${JSON.stringify(text)} is not an HTTP-date`, (t) => {
    t.is(parseHttpDate(text), undefined);
  });
}

test('§5.6.7 the 50-year rule compares dates, not years: in June 2026, 06-Nov-76 is 1976', (t) => {
  const june2026 = Date.UTC(2026, 5, 1);
  t.is(new Date(parseHttpDate('Saturday, 06-Nov-76 00:00:00 GMT', june2026)!).getUTCFullYear(), 1976);
  t.is(new Date(parseHttpDate('Monday, 01-Jun-76 00:00:00 GMT', june2026)!).getUTCFullYear(), 2076);
});
