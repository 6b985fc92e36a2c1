/** Lists of addresses and CIDRs (trusted hops, WAF rules), checked with node's BlockList; hosts and addresses without their port. */
import { BlockList, isIPv6 } from 'node:net';

/** Entries are validated when the config loads (config/request-rules.ts parseCidrs). */
export function buildBlockList(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const [address, prefix] = entry.split('/');
    const type = isIPv6(address!) ? 'ipv6' : 'ipv4';
    if (prefix === undefined) list.addAddress(address!, type);
    else list.addSubnet(address!, Number(prefix), type);
  }
  return list;
}

export function inAddressList(list: BlockList, address: string): boolean {
  return address !== '' && list.check(address, isIPv6(address) ? 'ipv6' : 'ipv4');
}

/**
 * An address or host name without the port some balancers and every non-default Host carry:
 * `203.0.113.5:4711`, `[2001:db8::1]:443` (unbracketed), `shop.example:8080`.
 */
export function withoutPort(hop: string): string {
  if (hop.startsWith('[')) {
    const end = hop.indexOf(']');
    return end === -1 ? hop : hop.slice(1, end);
  }
  const colon = hop.indexOf(':');
  return colon !== -1 && colon === hop.lastIndexOf(':') ? hop.slice(0, colon) : hop;
}

/** A Host as a name: no port, no final dot (`Shop.Example.:8080` is `shop.example`). */
export function hostName(host: string): string {
  const name = withoutPort(host).toLowerCase();
  return name.endsWith('.') ? name.slice(0, -1) : name;
}
