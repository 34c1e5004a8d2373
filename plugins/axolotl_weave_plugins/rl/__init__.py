"""Preference training (`rl: dpo | ipo | orpo | simpo`): one plugin, `rl.preference`."""
