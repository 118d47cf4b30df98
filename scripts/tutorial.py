"""Print the tutorial's four transcripts, reproduced by linreg.tutorial.stages (stages 3 and 4 seeded)."""

from linreg.tutorial import stages as reference

STAGES = (
    ("Stage 1: manual gradient descent", reference.stage1_manual_gradient),
    ("Stage 2: nn.MSELoss + torch.optim.SGD", reference.stage2_loss_and_optimizer),
    ("Stage 3: nn.Linear (seed 0)", reference.stage3_nn_linear),
    ("Stage 4: custom LinearRegression module (seed 0)", reference.stage4_custom_module),
)

if __name__ == "__main__":
    for title, stage in STAGES:
        print(f"== {title}")
        print("\n".join(stage().transcript()))
        print()
