/**
 * SQL injection (CRS 942). The main test tokenises the value the way libinjection does: the
 * value is read as SQL as-is, and as if it continued a '…' or "…" literal, and the first tokens'
 * types (the fingerprint) are matched against shapes that only injected SQL takes (a literal
 * closed then `or …=`, a comment, `;` and a statement, `union select` …). Prose keeps shapes
 * like "word word 'string' word". A few regular expressions add the unambiguous markers.
 */
import { ALL, ARG, BODY, COOKIE, HEADER, PATH, SEGMENT, URL, custom, regex, type Signature } from './signature.js';

const SCOPE = PATH | ARG | COOKIE | HEADER | BODY;

// Token types: s string, 1 number, n bareword, v @variable, f SQL function call, E statement,
// U union, & logic operator, = comparison, o other operator, a lone '*', k boolean-ish keyword, w other keyword, K clause
// (having, limit …), B order/group by, c comment, ( ) , ; . and x for anything else.
const KEYWORDS = new Map<string, string>();
for (const w of ['select', 'insert', 'update', 'delete', 'drop', 'create', 'alter', 'truncate', 'exec', 'execute', 'declare', 'shutdown', 'grant', 'revoke', 'merge']) KEYWORDS.set(w, 'E');
for (const w of ['and', 'or', 'xor']) KEYWORDS.set(w, '&');
for (const w of ['like', 'rlike', 'regexp', 'is', 'in', 'between', 'sounds']) KEYWORDS.set(w, '=');
for (const w of ['div', 'mod', 'collate', 'escape']) KEYWORDS.set(w, 'o');
for (const w of ['true', 'false', 'null', 'not', 'exists', 'unknown']) KEYWORDS.set(w, 'k');
for (const w of ['having', 'procedure', 'limit', 'into', 'waitfor', 'offset']) KEYWORDS.set(w, 'K');
for (const w of ['from', 'where', 'as', 'case', 'when', 'then', 'else', 'end', 'join', 'table', 'set', 'values', 'top', 'asc', 'desc', 'delay', 'outfile', 'dumpfile', 'dual', 'all', 'distinct']) KEYWORDS.set(w, 'w');
KEYWORDS.set('union', 'U');

const FUNCTIONS = new Set([
  'sleep', 'benchmark', 'pg_sleep', 'version', 'database', 'schema', 'user', 'current_user', 'system_user', 'session_user',
  'concat', 'concat_ws', 'group_concat', 'char', 'chr', 'nchar', 'ascii', 'ord', 'substring', 'substr', 'mid', 'left', 'right',
  'length', 'len', 'hex', 'unhex', 'bin', 'load_file', 'extractvalue', 'updatexml', 'count', 'cast', 'convert', 'if', 'ifnull',
  'iif', 'isnull', 'nullif', 'coalesce', 'md5', 'sha1', 'sha2', 'rand', 'floor', 'exp', 'now', 'sysdate', 'randomblob', 'json_keys',
  'elt', 'make_set', 'name_const', 'row', 'polygon', 'geometrycollection', 'multipoint', 'multilinestring', 'linestring', 'db_name',
  'user_name', 'is_srvrolemember', 'openrowset', 'opendatasource', 'lower', 'upper', 'reverse', 'instr', 'locate', 'char_length',
  'conv', 'unix_timestamp', 'current_database', 'pg_read_file', 'lo_import', 'sqlite_version', 'load_extension', 'sys_context',
  'to_char', 'exists', 'receive_message', 'get_host_name', 'get_host_address', 'request', 'xmltype', 'gtid_subset', 'st_latfromgeohash',
  'updatexml', 'waitfor', 'select', 'case', 'table_name', 'column_name', 'schema_name', 'substring_index', 'ascii_str', 'regexp_substr',
]);

const MAX_TOKENS = 14;
const BY = /^\s*by\b/i;

function isWordStart(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === 95 || c > 127;
}
function isWordChar(c: number): boolean {
  return isWordStart(c) || (c >= 48 && c <= 57) || c === 36;
}
function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}
function isSpace(c: number): boolean {
  return c === 32 || (c >= 9 && c <= 13) || c === 160;
}
function isOpChar(c: number): boolean {
  // = < > ! + - * / % ^ ~ | & :
  return c === 61 || c === 60 || c === 62 || c === 33 || c === 43 || c === 45 || c === 42 || c === 47 || c === 37 || c === 94 || c === 126 || c === 124 || c === 38 || c === 58;
}

/** End (exclusive) of a quoted literal opened at `i` (the quote), honouring '' and \ escapes. */
function stringEnd(s: string, i: number, q: number): number {
  const n = s.length;
  for (let j = i + 1; j < n; j++) {
    const c = s.charCodeAt(j);
    if (c === 92) {
      j++;
      continue;
    }
    if (c === q) {
      if (s.charCodeAt(j + 1) === q) {
        j++;
        continue;
      }
      return j + 1;
    }
  }
  return n;
}

/**
 * The fingerprint of `s`: its first token types. With `quote` (39 or 34), `s` is read as the
 * rest of a literal that quote opened; undefined when the literal never closes (no injection).
 */
export function fingerprint(s: string, quote: number): string | undefined {
  const n = s.length;
  let fp = '';
  let i = 0;
  if (quote !== 0) {
    const end = stringEnd(s, -1, quote);
    if (end >= n && s.charCodeAt(n - 1) !== quote) return undefined;
    fp = 's';
    i = end;
  }
  let prev = '';
  while (i < n && fp.length < MAX_TOKENS) {
    const c = s.charCodeAt(i);
    if (isSpace(c)) {
      i++;
      continue;
    }
    let t: string;
    if (c === 39 || c === 34) {
      i = stringEnd(s, i, c);
      t = 's';
    } else if (isDigit(c) || (c === 46 && isDigit(s.charCodeAt(i + 1)))) {
      i = numberEnd(s, i);
      t = '1';
    } else if (isWordStart(c) || c === 96) {
      let j: number;
      if (c === 96) {
        const close = s.indexOf('`', i + 1);
        j = close === -1 ? n : close + 1;
        t = 'n';
      } else {
        j = i + 1;
        while (j < n && isWordChar(s.charCodeAt(j))) j++;
        const word = s.slice(i, j).toLowerCase();
        t = KEYWORDS.get(word) ?? 'n';
        let k = j;
        while (k < n && isSpace(s.charCodeAt(k))) k++;
        if (s.charCodeAt(k) === 40 && FUNCTIONS.has(word)) t = 'f';
        else if ((word === 'order' || word === 'group') && BY.test(s.slice(j, j + 12))) {
          j += BY.exec(s.slice(j, j + 12))![0].length;
          t = 'B';
        } else if (prev === 'U' && (word === 'all' || word === 'distinct')) {
          i = j;
          continue;
        }
      }
      i = j;
    } else if (c === 64) {
      let j = i + 1;
      if (s.charCodeAt(j) === 64) j++;
      while (j < n && (isWordChar(s.charCodeAt(j)) || s.charCodeAt(j) === 46)) j++;
      t = j > i + 1 ? 'v' : 'o';
      i = j;
    } else if (c === 35) {
      i = lineEnd(s, i);
      t = 'c';
    } else if (c === 45 && s.charCodeAt(i + 1) === 45) {
      i = lineEnd(s, i);
      t = 'c';
    } else if (c === 47 && s.charCodeAt(i + 1) === 42) {
      if (s.charCodeAt(i + 2) === 33) {
        // MySQL runs what an executable comment holds.
        i += 3;
        while (i < n && isDigit(s.charCodeAt(i))) i++;
        continue;
      }
      const end = s.indexOf('*/', i + 2);
      if (end !== -1) {
        i = end + 2;
        continue;
      }
      i = n;
      t = 'c';
    } else if (c === 42 && s.charCodeAt(i + 1) === 47) {
      i += 2;
      continue;
    } else if ((c === 124 && s.charCodeAt(i + 1) === 124) || (c === 38 && s.charCodeAt(i + 1) === 38)) {
      i += 2;
      t = '&';
    } else if (isOpChar(c)) {
      let j = i + 1;
      while (j < n && isOpChar(s.charCodeAt(j)) && !(s.charCodeAt(j) === 45 && s.charCodeAt(j + 1) === 45) && !(s.charCodeAt(j) === 47 && s.charCodeAt(j + 1) === 42)) j++;
      t = j === i + 1 && c === 42 ? 'a' : comparison(s, i, j) ? '=' : 'o';
      i = j;
    } else if (c === 40 || c === 41 || c === 44 || c === 59 || c === 46) {
      t = s[i]!;
      i++;
    } else {
      t = 'x';
      i++;
    }
    fp += t;
    prev = t;
  }
  return fp;
}

/** An operator run with = < or > in it. */
function comparison(s: string, i: number, j: number): boolean {
  for (let k = i; k < j; k++) {
    const c = s.charCodeAt(k);
    if (c === 61 || c === 60 || c === 62) return true;
  }
  return false;
}

function numberEnd(s: string, i: number): number {
  const n = s.length;
  if (s.charCodeAt(i) === 48 && (s.charCodeAt(i + 1) | 32) === 120) {
    let j = i + 2;
    while (j < n && (isDigit(s.charCodeAt(j)) || ((s.charCodeAt(j) | 32) >= 97 && (s.charCodeAt(j) | 32) <= 102))) j++;
    return j;
  }
  let j = i;
  while (j < n && (isDigit(s.charCodeAt(j)) || s.charCodeAt(j) === 46)) j++;
  if ((s.charCodeAt(j) | 32) === 101 && (isDigit(s.charCodeAt(j + 1)) || ((s.charCodeAt(j + 1) === 45 || s.charCodeAt(j + 1) === 43) && isDigit(s.charCodeAt(j + 2))))) {
    j += 2;
    while (j < n && isDigit(s.charCodeAt(j))) j++;
  }
  return j;
}

function lineEnd(s: string, i: number): number {
  const nl = s.indexOf('\n', i);
  return nl === -1 ? s.length : nl + 1;
}

// `=` is a comparison, `o` another operator, `a` a lone `*` (`select *` needs it told apart).
// After a literal the attacker closed: `' or 'a'='a`, `' or 1`, `'--`, `'; drop`, `' order by`, `'-sleep(`.
const AFTER_QUOTE = /^s\)*(?:&(?:\(*[s1nv]\)*[=oa]|\(*[s1vk]\)*(?:c|;|$)|\(*[s1nv]\)*c|\(*f|\(+[E1sfv]|\(*E|k|\(*v)|;(?:[Ekfvc(]|$)|c|[KB]|[=oa]\(*[fvE]|[=oa][1s]\)*(?:c|$|&|;))/;
// A value that starts with a literal of its own: only comparisons and calls (`"" or ""="`).
const LEADING_STRING = /^s\)*&(?:\(*[s1nv]\)*=|\(*f|\(+E|\(*v)/;
// Numeric context: `1 or 1=1`, `1) and sleep(5)`, `1;drop`, `1 order by 3`, `1*(select`.
const NUMERIC = /^\(*o?1\)*(?:&(?:\(*[s1nv]\)*[=oa]|\(*[1s]\)*c|\(*f|\(+[E1sfv]|\(*E|k(?:$|[co;&)])|\(*v)|;[Ekfvc(]|[KB]|[=oa]\(*[fvE])/;
// Bareword or operator first: `x or 1=1`, `or 1=1`, `or true--`, `select * from`, `(select 1)`.
const OTHER = /^(?:n\)*&(?:\(*[1v]\)*=|\(*s\)*=|\(*f|\(+E)|&(?:\(*[s1v]\)*=|\(*f|\(+E|k(?:$|[c;]))|\(*E(?:a[wn1]|1[,w]|v|f|\(+[1Ef]))/;
// `union select` anywhere among the first tokens.
const ANYWHERE = /U\(*E/;

function injectionShape(s: string): string | undefined {
  const plain = fingerprint(s, 0)!;
  const first = plain.charCodeAt(0);
  let hit: boolean;
  if (first === 115 /* s */) hit = LEADING_STRING.test(plain);
  else if (first === 49 /* 1 */ || first === 40 /* ( */ || plain.startsWith('o1')) hit = NUMERIC.test(plain) || OTHER.test(plain);
  else hit = OTHER.test(plain);
  if (hit || ANYWHERE.test(plain)) return plain;
  if (s.includes("'")) {
    const fp = fingerprint(s, 39);
    if (fp !== undefined && AFTER_QUOTE.test(fp)) return fp;
  }
  if (s.includes('"')) {
    const fp = fingerprint(s, 34);
    if (fp !== undefined && AFTER_QUOTE.test(fp)) return fp;
  }
  return undefined;
}

/** Cheap filter: SQL needs one of these (space after decoding, quote, paren, comment, operator). */
const SQL_CHARS = /[\s'"`()#;=<>|&@*\/-]/;

const tokens = custom('sqli-tokens', 'sqli', 1, SCOPE | SEGMENT, 'SQL injection (tokenizer)', (form) => {
  if (!SQL_CHARS.test(form)) return undefined;
  const head = form.length > 4096 ? form.slice(0, 4096) : form;
  return injectionShape(head) === undefined ? undefined : head;
});

// ~ ! @ # $ ^ & * ( ) - + = { } [ ] | : ; " ' ` < > and the typographic quotes (CRS 942430).
const META = new Uint8Array(128);
for (const ch of '~!@#$^&*()-+={}[]|:;"\'`<>') META[ch.charCodeAt(0)] = 1;
function metaCount(form: string, limit: number): string | undefined {
  let count = 0;
  for (let i = 0; i < form.length; i++) {
    const c = form.charCodeAt(i);
    if (c < 128 ? META[c] === 1 : c === 0xb4 || c === 0x2018 || c === 0x2019) {
      if (++count >= limit) return form;
    }
  }
  return undefined;
}

export const sqliSignatures: readonly Signature[] = [
  tokens,
  regex('sqli-union', 'sqli', 1, SCOPE, 'SQL UNION SELECT', /\bunion\b[\s(]{0,20}(?:(?:all|distinct)\b[\s(]{0,20})?select\b/i),
  regex('sqli-timing', 'sqli', 1, SCOPE, 'SQL time-based probe', /\b(?:sleep|pg_sleep)\s*\(\s*(?:\d{1,4}(?:\.\d{1,4})?|[@'"(][^)]{0,60})\s*\)|\bbenchmark\s*\(\s*\d{1,12}\s*,|\bwaitfor\s+(?:delay|time)\s+['"\d]|\bdbms_(?:pipe\.receive_message|lock\.sleep)\s*\(|\brandomblob\s*\(\s*\d{5}/i),
  regex('sqli-schema', 'sqli', 1, SCOPE, 'SQL catalog or system variable', /\b(?:information_schema|pg_catalog|pg_shadow|sysobjects|syscolumns|msysaccessobjects|msysobjects|sqlite_master|sqlite_schema|mysql\.(?:user|db)\b|sys\.(?:objects|tables|columns|databases|sql_logins)\b|all_tab_columns|dba_users|v\$version)|@@(?:version|datadir|hostname|basedir|servername|spid|tmpdir|global)\b/i),
  regex('sqli-functions', 'sqli', 1, SCOPE, 'SQL injection function', /\b(?:extractvalue|updatexml|load_file|xp_cmdshell|sp_oacreate|sp_executesql|sp_makewebtask|xp_dirtree|xp_regread|xp_fileexist|utl_inaddr\.\w+|utl_http\.\w+|dbms_xmlquery\.\w+|ctxsys\.drithsx\.sn|json_keys|gtid_subset|name_const|pg_read_file|lo_import|load_extension)\s*\(|\binto\s+(?:out|dump)file\s*['"]|\bchar\s*\(\s*\d{1,3}\s*(?:,\s*\d{1,3}\s*){2,}\)|\bexp\s*\(\s*~/i),
  regex('sqli-case', 'sqli', 1, SCOPE, 'SQL CASE expression', /\(\s*case\s+when\b[\s\S]{1,200}?\bthen\b/i),
  regex('sqli-stacked', 'sqli', 1, SCOPE, 'stacked SQL statement', /;\s*(?:(?:drop|truncate|alter)\s+(?:table|database|schema|user|view|procedure|function|index)\b|delete\s+from\b|insert\s+into\b|update\s+\S{1,64}\s+set\b|exec(?:ute)?\s+(?:master\.|xp_|sp_|\(|@)|shutdown\b|declare\s+@|waitfor\s|create\s+(?:table|user|database|function|procedure|login)\b|select\s+(?:[\d*@(]|\w{1,64}\s*\())/i),
  regex('sqli-exec-comment', 'sqli', 1, ALL, 'MySQL executable comment', /\/\*!\d{0,6}\s*(?:union|select|and|or|having|insert|update|delete|\d)/i),
  // Paranoia 2: SQL keyword pairs and quote-then-keyword, as in prose they are rare but not absent.
  regex('sqli-keywords', 'sqli', 2, SCOPE, 'SQL keywords', /\b(?:select\b[\s\S]{1,80}?\bfrom|insert\s+into|delete\s+from|update\b[\s\S]{1,60}?\bset|drop\s+(?:table|database)|union\b[\s\S]{1,40}?\bselect|order\s+by\s+\d|group\s+by\s+\d)\b/i),
  regex('sqli-quote-keyword', 'sqli', 2, SCOPE, 'quote then SQL keyword', /['"`]\s*(?:\)\s*)*(?:(?:or|and|xor|union|having|order\s+by|group\s+by|limit)(?=[\s(\-#;'"`@0-9]|$)|--|#|;)/i),
  custom('sqli-meta-12', 'sqli', 2, URL, 'many SQL meta characters', (form) => metaCount(form, 12)),
  custom('sqli-meta-6', 'sqli', 3, URL, 'SQL meta characters', (form) => metaCount(form, 6)),
  regex('sqli-keyword', 'sqli', 3, SCOPE, 'SQL keyword', /\b(?:union|select|having|sleep|benchmark|waitfor|xp_\w+|exec)\b/i),
];
