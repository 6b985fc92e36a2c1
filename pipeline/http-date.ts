/**
 * HTTP-date (RFC 9110 §5.6.7). Recipients accept all three formats:
 *
 *   IMF-fixdate  Sun, 06 Nov 1994 08:49:37 GMT
 *   rfc850-date  Sunday, 06-Nov-94 08:49:37 GMT
 *   asctime-date Sun Nov  6 08:49:37 1994
 *
 * and nothing else: fields single-space separated, two-digit time fields, the zone GMT. Day and
 * month names are matched without regard to case (the grammar is case-sensitive, but `THU` or
 * `AUG` leaves no doubt about the date, and http-tests/cache-tests expects them to be read).
 * `Date.parse` is not used because it accepts far more (ISO dates, other zones, bare numbers),
 * and an invalid Expires must mean "already expired" (RFC 9111 §5.3), not a guessed date.
 */

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const DAY = '(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)';
const DAY_LONG = '(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)';
const MONTH = `(${MONTHS.join('|')})`;
const TIME = '(\\d{2}):(\\d{2}):(\\d{2})';

const IMF_FIXDATE = new RegExp(`^${DAY}, (\\d{2}) ${MONTH} (\\d{4}) ${TIME} GMT$`, 'i');
const RFC850_DATE = new RegExp(`^${DAY_LONG}, (\\d{2})-${MONTH}-(\\d{2}) ${TIME} GMT$`, 'i');
const ASCTIME_DATE = new RegExp(`^${DAY} ${MONTH} (\\d{2}| \\d) ${TIME} (\\d{4})$`, 'i');

/** Milliseconds since the epoch, or undefined when `text` is not an HTTP-date. */
export function parseHttpDate(text: string | undefined, now = Date.now()): number | undefined {
  if (text === undefined) return undefined;
  const value = text.trim();
  let m = IMF_FIXDATE.exec(value);
  if (m) return build(Number(m[3]), m[2]!, Number(m[1]), m[4]!, m[5]!, m[6]!);
  m = ASCTIME_DATE.exec(value);
  if (m) return build(Number(m[6]), m[1]!, Number(m[2]), m[3]!, m[4]!, m[5]!);
  m = RFC850_DATE.exec(value);
  if (m) return build(fullYear(Number(m[3]), m[2]!, Number(m[1]), now), m[2]!, Number(m[1]), m[4]!, m[5]!, m[6]!);
  return undefined;
}

/**
 * A two-digit year is in the current century, unless that puts the date more than 50 years in
 * the future: then it is the most recent past year with those digits (RFC 9110 §5.6.7).
 */
function fullYear(twoDigits: number, month: string, day: number, now: number): number {
  const current = new Date(now).getUTCFullYear();
  const year = current - (current % 100) + twoDigits;
  const fiftyYearsAhead = new Date(now);
  fiftyYearsAhead.setUTCFullYear(current + 50);
  const candidate = build(year, month, day, '00', '00', '00');
  return candidate !== undefined && candidate > fiftyYearsAhead.getTime() ? year - 100 : year;
}

function build(year: number, month: string, day: number, hour: string, minute: string, second: string): number | undefined {
  const h = Number(hour);
  const min = Number(minute);
  const s = Number(second);
  // 60 is a leap second (RFC 9110 §5.6.7 allows it).
  if (day < 1 || day > 31 || h > 23 || min > 59 || s > 60) return undefined;
  const monthIndex = MONTHS.findIndex((name) => name.toLowerCase() === month.toLowerCase());
  const date = new Date(0);
  date.setUTCFullYear(year, monthIndex, day);
  // A day the month does not have (31 Feb) rolls over: not a date.
  if (date.getUTCMonth() !== monthIndex) return undefined;
  return date.getTime() + ((h * 60 + min) * 60 + s) * 1000;
}
