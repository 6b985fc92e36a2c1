/**
 * Security scanners (CRS 913): tool names in User-Agent, headers only scanners send, and the
 * out-of-band callback domains (Burp Collaborator, interactsh …) scanners plant in payloads.
 * Ordinary clients (curl, wget, language HTTP libraries, crawlers, monitors) are not scanners.
 */
import { ARG, BODY, COOKIE, HEADER, PATH, regex, type Signature } from './signature.js';

export const SCANNER_AGENT = /\b(?:sqlmap|nikto|nmap|masscan|acunetix|nessus|openvas|wpscan|dirbuster|gobuster|ffuf|fuzz faster u fool|nuclei|zgrab|w3af|havij|netsparker|invicti|arachni|skipfish|wfuzz|dirb|commix|jaeles|whatweb|paros|webinspect|appscan|qualys|detectify|xsser|fimap|grabber|jbrofuzz|bsqlbf|pangolin|zmeu|morfeus|metasploit|struts-?pwn|feroxbuster|dirsearch|interactsh|l9explore|l9tcpid|censysinspect|webshag|mysqloit|absinthe|nsauditor|x-scan|crimscanner|webvulnscan|vulnscan|burp(?:suite|collaborator)?|owasp[ _-]?zap|zaproxy|sf-?scanner|ncrack|wapiti|vega\/|sqlninja|sqlsus|bbqsql|joomscan|droopescan|cmsmap|w3af\.org|teh forest lobster|morpheus fucking scanner|python-nmap|nasl|openvas|xenotix|httprint|webscarab|grendel-scan|pmafind|webreaper|evilgrab|blackwidow|cgichk|dotdotpwn|domino hunter|autogetcontent|s\.t\.a\.l\.k\.e\.r|zgrab|masscan|project ?discovery|pythonscanner|scan4|netsystemsresearch|expanse, a palo alto|\(hydra\)|onlyscans|modatscanner|l9scan)\b/i;

/** Header names only scanners send. */
export const SCANNER_HEADERS = new Set(['x-scanner', 'acunetix-product', 'acunetix-aspect', 'acunetix-aspect-password', 'acunetix-aspect-queries', 'acunetix-scanning-agreement', 'acunetix-user-agreement', 'x-wipp', 'x-scan-memo', 'x-request-memo', 'x-ratproxy-loop', 'x-burp-collaborator', 'x-nessus', 'x-arachni-scan-seed']);

/** Out-of-band interaction domains planted by scanners. */
const CALLBACK = /(?:burpcollaborator\.net|oastify\.com|oast\.(?:fun|pro|live|site|online|me)|interact\.sh|interactsh\.com|dnslog\.cn|ceye\.io|bxss\.me|xss\.ht|requestrepo\.com|canarytokens\.com|dnslog\.link|eyes\.sh)\b/i;

export const scannerRuleIds = ['scanner-user-agent', 'scanner-header'];

export const scannerSignatures: readonly Signature[] = [
  regex('scanner-callback-domain', 'scanner', 1, PATH | ARG | COOKIE | HEADER | BODY, 'scanner callback domain', CALLBACK),
];
