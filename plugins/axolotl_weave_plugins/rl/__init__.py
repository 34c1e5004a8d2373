"""Preference training, one plugin per method (`rl.dpo` for dpo and ipo, `rl.orpo`, `rl.simpo`,
`rl.kto`) and `rl.preference_data` for what they share (the preference `type:`s, `rl_beta`)."""
