/** A configuration error names the field and where it came from. */
export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID';
  constructor(
    readonly field: string,
    readonly source: string,
    message: string,
  ) {
    super(`invalid ${field} (${source}): ${message}`);
    this.name = 'ConfigError';
  }
}
