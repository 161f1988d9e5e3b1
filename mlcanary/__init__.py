"""mlcanary: staged rollouts of ML models to Azure ML online endpoints."""
