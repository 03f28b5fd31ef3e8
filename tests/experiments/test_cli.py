"""experiments.cli: a command line from a Config dataclass."""

import dataclasses

import pytest

from experiments.cli import parse_config


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = dataclasses.field(default="cnn", metadata={"choices": ("cnn", "mlp")})
    learning_rate: float | None = None
    batch_size: int = 64
    augment: bool = True


def test_defaults_when_no_flags():
    assert parse_config(Config, "test", []) == Config()


def test_each_field_is_a_typed_flag():
    config = parse_config(Config, "test", ["--model", "mlp", "--learning-rate", "0.01", "--batch-size", "8",
                                           "--no-augment"])
    assert config == Config(model="mlp", learning_rate=0.01, batch_size=8, augment=False)
    assert isinstance(config.learning_rate, float) and isinstance(config.batch_size, int)


@pytest.mark.parametrize("argv, message", [
    (["--model", "rnn"], "invalid choice: 'rnn'"),
    (["--batch-size", "eight"], "invalid int value: 'eight'"),
    (["--epochs", "3"], "unrecognized arguments: --epochs 3"),
])
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(Config, "test", argv)
    assert message in capsys.readouterr().err
