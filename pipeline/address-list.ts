/** Lists of addresses and CIDRs (trusted hops, WAF rules), checked with node's BlockList. */
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
