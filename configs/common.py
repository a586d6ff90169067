"""Helpers shared by the config files."""

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'a,b=1,c=x' into a ConfigDict typed by `defaults`.

  A bare word `w` sets the boolean default `w` to True (so `:smoke` works);
  `k=v` casts v to the type of `defaults[k]`. Unknown names raise ValueError.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for token in filter(None, (arg or "").split(",")):
    key, eq, value = token.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; "
                       f"known: {sorted(defaults)}")
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r} is not a bool")
      out[key] = value.lower() in ("true", "1")
    else:
      out[key] = type(default)(value)
  return out
