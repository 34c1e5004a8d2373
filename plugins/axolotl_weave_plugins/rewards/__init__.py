"""Reward models (`reward_model: true`, `process_reward_model: true`): one plugin,
`rewards.reward_models`."""
